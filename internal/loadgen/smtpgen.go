package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// SMTPConfig configures the SMTP load generator.
type SMTPConfig struct {
	Target       string        // host:port of the relay under test
	N            int           // messages in total
	C            int           // parallel sessions, each reusing its connection
	Size         int           // message size in bytes (headers + body)
	From, To     string        // envelope and header addresses
	Helo         string        // EHLO name
	IOTimeout    time.Duration // per message exchange
	NoPipelining bool          // never pipeline, even if offered
}

// genResult is what a load generator hands back to the runner.
type genResult struct {
	attempted, accepted int64
	requests            int64
	errors              map[string]int64
	samples             map[string]string
	latencies           []time.Duration
	acceptElapsed       time.Duration // start -> last accepted reply
	// sendLags (open-loop HTTP only): how late each request was sent after
	// its scheduled time.
	sendLags []time.Duration
	// starts (HTTP with a latency log only): each accepted request's start,
	// index for index with latencies, in this worker's result only (merge
	// does not carry it).
	starts []time.Time
}

func (g *genResult) addErr(key, sample string) {
	if g.errors == nil {
		g.errors = map[string]int64{}
		g.samples = map[string]string{}
	}
	g.errors[key]++
	if _, ok := g.samples[key]; !ok && sample != "" {
		g.samples[key] = sample
	}
}

func (g *genResult) merge(o *genResult) {
	g.attempted += o.attempted
	g.accepted += o.accepted
	g.requests += o.requests
	for k, v := range o.errors {
		if g.errors == nil {
			g.errors = map[string]int64{}
			g.samples = map[string]string{}
		}
		g.errors[k] += v
		if _, ok := g.samples[k]; !ok && o.samples[k] != "" {
			g.samples[k] = o.samples[k]
		}
	}
	g.latencies = append(g.latencies, o.latencies...)
	g.sendLags = append(g.sendLags, o.sendLags...)
	g.acceptElapsed = max(g.acceptElapsed, o.acceptElapsed)
}

// smtpConn is one raw client session.
type smtpConn struct {
	c          net.Conn
	br         *bufio.Reader
	pipelining bool
	size       bool
	last       []byte // last reply line, for error samples
}

// errReply is returned for a bad greeting/EHLO reply.
type errReply struct {
	stage string
	code  int
	line  string
}

func (e *errReply) Error() string { return fmt.Sprintf("%s: %s", e.stage, e.line) }

func dialSMTP(ctx context.Context, cfg *SMTPConfig) (*smtpConn, error) {
	d := net.Dialer{Timeout: cfg.IOTimeout}
	c, err := d.DialContext(ctx, "tcp", cfg.Target)
	if err != nil {
		return nil, err
	}
	sc := &smtpConn{c: c, br: bufio.NewReaderSize(c, 16<<10)}
	_ = c.SetDeadline(deadline(ctx, cfg.IOTimeout))
	code, err := sc.readReply(nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	if code != 220 {
		c.Close()
		return nil, &errReply{"greeting", code, string(sc.last)}
	}
	if _, err := fmt.Fprintf(c, "EHLO %s\r\n", cfg.Helo); err != nil {
		c.Close()
		return nil, err
	}
	code, err = sc.readReply(func(l []byte) {
		if len(l) < 4 {
			return
		}
		kw := bytes.ToUpper(bytes.TrimSpace(l[4:]))
		if bytes.Equal(kw, []byte("PIPELINING")) {
			sc.pipelining = !cfg.NoPipelining
		}
		if bytes.HasPrefix(kw, []byte("SIZE")) {
			sc.size = true
		}
	})
	if err != nil {
		c.Close()
		return nil, err
	}
	if code != 250 {
		sc.pipelining, sc.size = false, false
		if _, err := fmt.Fprintf(c, "HELO %s\r\n", cfg.Helo); err != nil {
			c.Close()
			return nil, err
		}
		if code, err = sc.readReply(nil); err != nil {
			c.Close()
			return nil, err
		}
		if code != 250 {
			c.Close()
			return nil, &errReply{"HELO", code, string(sc.last)}
		}
	}
	return sc, nil
}

func deadline(ctx context.Context, d time.Duration) time.Time {
	t := time.Now().Add(d)
	if dl, ok := ctx.Deadline(); ok && dl.Before(t) {
		return dl
	}
	return t
}

// readReply reads one (possibly multi-line) reply and returns its code.
// each, if non-nil, sees every line.
func (s *smtpConn) readReply(each func([]byte)) (int, error) {
	for {
		l, err := s.br.ReadSlice('\n')
		if err != nil {
			if err == bufio.ErrBufferFull {
				continue
			}
			return 0, err
		}
		if len(l) < 4 || l[0] < '1' || l[0] > '5' {
			return 0, fmt.Errorf("malformed reply %q", l)
		}
		code := int(l[0]-'0')*100 + int(l[1]-'0')*10 + int(l[2]-'0')
		if each != nil {
			each(l)
		}
		if l[3] != '-' {
			s.last = append(s.last[:0], bytes.TrimRight(l, "\r\n")...)
			return code, nil
		}
	}
}

func (s *smtpConn) close() { _ = s.c.Close() }

func (s *smtpConn) quit() {
	_ = s.c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := s.c.Write([]byte("QUIT\r\n")); err == nil {
		_, _ = s.readReply(nil)
	}
	s.close()
}

// outcome of one transaction.
type txOutcome struct {
	code   int    // final (or failing) reply code
	stage  string // where it failed: MAIL, RCPT, DATA, EOM
	closed bool   // the connection should not be reused
}

// send runs one transaction: MAIL, RCPT, DATA (pipelined in one write when the
// server offers PIPELINING), then the message after 354.
func (s *smtpConn) send(cmds, msg []byte) (txOutcome, error) {
	var mailC, rcptC, dataC int
	var err error
	if s.pipelining {
		if _, err = s.c.Write(cmds); err != nil {
			return txOutcome{}, err
		}
		if mailC, err = s.readReply(nil); err != nil {
			return txOutcome{}, err
		}
		if rcptC, err = s.readReply(nil); err != nil {
			return txOutcome{}, err
		}
		if dataC, err = s.readReply(nil); err != nil {
			return txOutcome{}, err
		}
	} else {
		i := bytes.Index(cmds, []byte("\r\n")) + 2
		j := i + bytes.Index(cmds[i:], []byte("\r\n")) + 2
		for k, part := range [][]byte{cmds[:i], cmds[i:j], cmds[j:]} {
			if _, err = s.c.Write(part); err != nil {
				return txOutcome{}, err
			}
			code, err := s.readReply(nil)
			if err != nil {
				return txOutcome{}, err
			}
			switch k {
			case 0:
				mailC = code
			case 1:
				rcptC = code
			case 2:
				dataC = code
			}
			if code/100 != 2 && code != 354 {
				break
			}
		}
	}
	var out txOutcome
	switch {
	case mailC/100 != 2:
		out = txOutcome{code: mailC, stage: "MAIL"}
	case rcptC/100 != 2:
		out = txOutcome{code: rcptC, stage: "RCPT"}
	case dataC != 354:
		out = txOutcome{code: dataC, stage: "DATA"}
	default:
		if _, err = s.c.Write(msg); err != nil {
			return txOutcome{}, err
		}
		code, err := s.readReply(nil)
		if err != nil {
			return txOutcome{}, err
		}
		return txOutcome{code: code, stage: "EOM", closed: code == 421}, nil
	}
	if out.code == 421 || mailC == 421 || rcptC == 421 || dataC == 421 {
		out.closed = true
		return out, nil
	}
	if dataC == 354 { // server accepted DATA despite a failed MAIL/RCPT: end it empty
		if _, err = s.c.Write([]byte(".\r\n")); err != nil {
			return out, err
		}
		if _, err = s.readReply(nil); err != nil {
			return out, err
		}
	}
	if _, err = s.c.Write([]byte("RSET\r\n")); err != nil {
		return out, err
	}
	_, err = s.readReply(nil)
	return out, err
}

// runSMTP drives cfg.C sessions until cfg.N messages were attempted. Every
// session connects and says EHLO first; the clock starts (onStart) once all
// sessions are ready (or failed to connect).
func runSMTP(ctx context.Context, cfg SMTPConfig, runID string, onStart func(time.Time)) *genResult {
	var next atomic.Int64
	startCh := make(chan struct{})
	var ready, done sync.WaitGroup
	results := make([]*genResult, cfg.C)
	var start time.Time
	date := time.Now()
	for w := 0; w < cfg.C; w++ {
		ready.Add(1)
		done.Add(1)
		go func(w int) {
			defer done.Done()
			res := &genResult{latencies: make([]time.Duration, 0, cfg.N/cfg.C+8)}
			results[w] = res
			tmpl := newSMTPTemplate(cfg.From, cfg.To, runID, cfg.Size, date)
			plain := []byte(fmt.Sprintf("MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n", cfg.From, cfg.To))
			sized := []byte(fmt.Sprintf("MAIL FROM:<%s> SIZE=%d\r\nRCPT TO:<%s>\r\nDATA\r\n", cfg.From, len(tmpl.buf)-3, cfg.To))

			conn, cerr := dialSMTP(ctx, &cfg)
			ready.Done()
			<-startCh
			var lastAccept time.Time
			failedDials := 0
			for {
				seq := next.Add(1)
				if seq > int64(cfg.N) {
					break
				}
				if ctx.Err() != nil {
					break // deadline or interrupt: the rest counts as not sent
				}
				res.attempted++
				if conn == nil {
					if cerr == nil {
						conn, cerr = dialSMTP(ctx, &cfg)
					}
					if cerr != nil {
						res.addErr(connectErrKey(cerr), cerr.Error())
						cerr = nil
						failedDials++
						if failedDials >= 5 {
							break // give up; other sessions take the rest
						}
						time.Sleep(100 * time.Millisecond)
						continue
					}
				}
				failedDials = 0
				tmpl.put(seq)
				cmds := plain
				if conn.size {
					cmds = sized
				}
				t0 := time.Now()
				_ = conn.c.SetDeadline(deadline(ctx, cfg.IOTimeout))
				out, err := conn.send(cmds, tmpl.buf)
				if err != nil {
					key := "io error"
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						key = "io timeout"
					}
					if out.stage != "" { // the reply was read; the error came on RSET
						res.addErr(out.stage+" "+strconv.Itoa(out.code), string(conn.last))
					} else {
						res.addErr(key, err.Error())
					}
					conn.close()
					conn = nil
					continue
				}
				if out.stage == "EOM" && out.code/100 == 2 {
					now := time.Now()
					res.accepted++
					res.latencies = append(res.latencies, now.Sub(t0))
					lastAccept = now
				} else {
					res.addErr(out.stage+" "+strconv.Itoa(out.code), string(conn.last))
				}
				if out.closed {
					conn.close()
					conn = nil
				}
			}
			if conn != nil {
				conn.quit()
			}
			if !lastAccept.IsZero() {
				res.acceptElapsed = lastAccept.Sub(start)
			}
		}(w)
	}
	ready.Wait()
	start = time.Now()
	onStart(start)
	close(startCh)
	done.Wait()
	total := &genResult{latencies: make([]time.Duration, 0, cfg.N)}
	for _, r := range results {
		total.merge(r)
	}
	total.requests = total.attempted
	return total
}

func connectErrKey(err error) string {
	var er *errReply
	if errors.As(err, &er) {
		return er.stage + " " + strconv.Itoa(er.code)
	}
	return "connect error"
}
