package loadgen

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// Sink implementations.
const (
	SinkRaw    = "raw"     // hand-written, line-oriented (bytes.IndexByte per line); the default
	SinkGoSMTP = "go-smtp" // emersion/go-smtp server; reads DATA one byte at a time
)

// Sink is a discarding, counting SMTP server.
type Sink struct {
	Addr    string
	Tracker *Tracker
	close   func() error
}

// Close stops the sink and closes all its connections.
func (s *Sink) Close() error { return s.close() }

// StartSink listens on addr and counts every message into tr.
func StartSink(addr, impl string, tr *Tracker) (*Sink, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("sink: %w", err)
	}
	return StartSinkOn(ln, impl, tr)
}

// StartSinkOn serves the sink on an existing listener, which it then owns.
func StartSinkOn(ln net.Listener, impl string, tr *Tracker) (*Sink, error) {
	s := &Sink{Addr: ln.Addr().String(), Tracker: tr}
	switch impl {
	case SinkGoSMTP:
		srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
			return &goSMTPSession{tr: tr}, nil
		}))
		srv.Domain = "sink.sluice-bench.invalid"
		srv.MaxRecipients = 0
		srv.MaxMessageBytes = 0
		srv.ReadTimeout = 10 * time.Minute
		srv.WriteTimeout = time.Minute
		srv.ErrorLog = log.New(io.Discard, "", 0)
		go func() { _ = srv.Serve(ln) }()
		s.close = srv.Close
	case SinkRaw, "":
		rs := &rawSink{ln: ln, tr: tr, conns: map[net.Conn]struct{}{}}
		go rs.serve()
		s.close = rs.close
	default:
		ln.Close()
		return nil, fmt.Errorf("sink: unknown implementation %q (want %s or %s)", impl, SinkRaw, SinkGoSMTP)
	}
	return s, nil
}

// ---- go-smtp backend ----

type goSMTPSession struct {
	tr  *Tracker
	br  *bufio.Reader
	hdr headerScanner
}

func (s *goSMTPSession) Reset()                               {}
func (s *goSMTPSession) Logout() error                        { return nil }
func (s *goSMTPSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *goSMTPSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *goSMTPSession) Data(r io.Reader) error {
	if s.br == nil {
		s.br = bufio.NewReaderSize(r, 32<<10)
	} else {
		s.br.Reset(r)
	}
	s.hdr.reset()
	var n int64
	for !s.hdr.inBody {
		line, err := s.br.ReadSlice('\n')
		n += int64(len(line))
		s.hdr.line(line)
		if err == bufio.ErrBufferFull {
			continue // overlong header line; keep going
		}
		if err != nil {
			if err == io.EOF {
				s.tr.record(s.hdr.subjectValue(), n)
				return nil
			}
			return err
		}
	}
	m, err := s.br.WriteTo(io.Discard)
	if err != nil {
		return err
	}
	s.tr.record(s.hdr.subjectValue(), n+m)
	return nil
}

// ---- raw sink ----

type rawSink struct {
	ln    net.Listener
	tr    *Tracker
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	shut  bool
	wg    sync.WaitGroup
}

func (s *rawSink) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		s.mu.Lock()
		if s.shut {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.handle(c)
			c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

func (s *rawSink) close() error {
	s.mu.Lock()
	s.shut = true
	err := s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

const rawIdleTimeout = 10 * time.Minute

func (s *rawSink) handle(c net.Conn) {
	br := bufio.NewReaderSize(c, 64<<10)
	bw := bufio.NewWriterSize(c, 4<<10)
	var hdr headerScanner
	haveMail, rcpts := false, 0
	reply := func(r string) bool {
		bw.WriteString(r)
		if br.Buffered() == 0 { // nothing pipelined behind this command: flush now
			return bw.Flush() == nil
		}
		return true
	}
	bw.WriteString("220 sink.sluice-bench.invalid ESMTP sluice-bench sink\r\n")
	if bw.Flush() != nil {
		return
	}
	for {
		_ = c.SetReadDeadline(time.Now().Add(rawIdleTimeout))
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			for err == bufio.ErrBufferFull {
				_, err = br.ReadSlice('\n')
			}
			if err != nil || !reply("500 5.5.2 line too long\r\n") {
				return
			}
			continue
		}
		if err != nil {
			return
		}
		verb := line
		if len(verb) > 4 {
			verb = verb[:4]
		}
		var v [4]byte
		for i := 0; i < len(verb) && i < 4; i++ {
			ch := verb[i]
			if ch >= 'a' && ch <= 'z' {
				ch -= 'a' - 'A'
			}
			v[i] = ch
		}
		ok := true
		switch string(v[:]) {
		case "EHLO":
			ok = reply("250-sink.sluice-bench.invalid\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 SIZE\r\n")
			haveMail, rcpts = false, 0
		case "HELO":
			ok = reply("250 sink.sluice-bench.invalid\r\n")
			haveMail, rcpts = false, 0
		case "MAIL":
			haveMail, rcpts = true, 0
			ok = reply("250 2.1.0 OK\r\n")
		case "RCPT":
			if !haveMail {
				ok = reply("503 5.5.1 MAIL first\r\n")
			} else {
				rcpts++
				ok = reply("250 2.1.5 OK\r\n")
			}
		case "DATA":
			if rcpts == 0 {
				ok = reply("503 5.5.1 RCPT first\r\n")
				break
			}
			bw.WriteString("354 go ahead\r\n")
			if bw.Flush() != nil {
				return
			}
			hdr.reset()
			var n int64
			lineStart := true
			for {
				l, err := br.ReadSlice('\n')
				if err != nil && err != bufio.ErrBufferFull {
					return
				}
				// Only <CRLF>.<CRLF> ends the data (RFC 5321 4.1.1.4); a bare
				// ".\n" is content, as in go-smtp.
				if lineStart && len(l) == 3 && l[0] == '.' && l[1] == '\r' && l[2] == '\n' {
					break
				}
				n += int64(len(l))
				if lineStart {
					hdr.line(l)
				}
				lineStart = err == nil
			}
			// Answer before counting: the run closes the sink as soon as
			// the count is complete, and the sender must have its 250 by
			// then (a relay would otherwise see EOF and deliver again).
			haveMail, rcpts = false, 0
			bw.WriteString("250 2.0.0 OK queued\r\n")
			ok = bw.Flush() == nil
			s.tr.record(hdr.subjectValue(), n)
		case "RSET":
			haveMail, rcpts = false, 0
			ok = reply("250 2.0.0 OK\r\n")
		case "NOOP":
			ok = reply("250 2.0.0 OK\r\n")
		case "QUIT":
			bw.WriteString("221 2.0.0 bye\r\n")
			bw.Flush()
			return
		case "VRFY":
			ok = reply("252 2.5.0 cannot verify\r\n")
		default:
			ok = reply("502 5.5.2 command not implemented\r\n")
		}
		if !ok {
			return
		}
	}
}
