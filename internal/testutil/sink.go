package testutil

import (
	"crypto/tls"
	"io"
	"log"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// SinkOptions configure StartSink. The zero value is a plain-text server
// on 127.0.0.1 at a free port that accepts everything.
type SinkOptions struct {
	IP   string // address to listen on; default 127.0.0.1
	Port int    // default: any free port
	// TLS, when set, enables STARTTLS with this server configuration.
	TLS *tls.Config
	// AuthUser, when set, offers AUTH PLAIN (over clear text too) and
	// refuses MAIL until the client authenticated as AuthUser/AuthPass.
	AuthUser, AuthPass string
	MaxMessageBytes    int64 // SIZE limit; 0 is go-smtp's default
	SMTPUTF8           bool  // advertise SMTPUTF8
	// RequireTLS advertises REQUIRETLS (RFC 8689) after STARTTLS; the
	// MAIL parameter shows in SinkMessage.Opts.RequireTLS.
	RequireTLS bool
	// Timeout is the server's read and write timeout; default 1 minute.
	Timeout time.Duration
}

// SinkMessage is one message as a Sink received it: the envelope, the
// MAIL parameters and the data as the client sent it, dot-unstuffed.
type SinkMessage struct {
	From  string
	Rcpts []string
	Data  []byte
	Opts  smtp.MailOptions
	// ClientIP is the address the connection came from (the egress
	// source), HELO the name the client gave in EHLO; At is when the end
	// of data arrived.
	ClientIP string
	HELO     string
	At       time.Time
}

// Sink is an in-process go-smtp server, the next hop of tests that deliver
// mail: it records every message it accepts and counts the connections it
// accepted. The On* hooks decide its replies (return an *smtp.SMTPError to
// choose the code); set them before the connection they should affect is
// made and do not change them while a session runs. Messages and Conns are
// safe to call from any goroutine.
type Sink struct {
	Addr string // host:port it listens on
	IP   string
	Port int

	// OnMail, when set, answers MAIL FROM: a non-nil error refuses it.
	OnMail func(from string) error
	// OnRcpt, when set, answers each RCPT TO: a non-nil error refuses that
	// recipient only, which is how tests get per-recipient replies.
	OnRcpt func(to string) error
	// OnData, when set, takes over DATA: it reads the message and its
	// result is the reply; the message is then not recorded.
	OnData func(c *smtp.Conn, r io.Reader) error

	opts  SinkOptions
	srv   *smtp.Server
	done  chan struct{} // closed when Serve returned
	stop  sync.Once
	conns atomic.Int32
	open  atomic.Int32 // connections open now
	peak  atomic.Int32 // most connections open at once
	mu    sync.Mutex
	msgs  []SinkMessage
}

// StartSink starts a Sink and stops it (closing its connections and
// waiting for it to return) when the test ends. It fails the test if it
// cannot listen.
func StartSink(t testing.TB, o SinkOptions) *Sink {
	t.Helper()
	if o.IP == "" {
		o.IP = "127.0.0.1"
	}
	if o.Timeout == 0 {
		o.Timeout = time.Minute
	}
	s := &Sink{opts: o, IP: o.IP}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &sinkSession{s: s, c: c}, nil
	}))
	srv.Domain = "sink.test"
	srv.TLSConfig = o.TLS
	srv.AllowInsecureAuth = true // AUTH over clear text on loopback
	srv.MaxMessageBytes = o.MaxMessageBytes
	srv.EnableSMTPUTF8 = o.SMTPUTF8
	srv.EnableREQUIRETLS = o.RequireTLS
	srv.ReadTimeout = o.Timeout
	srv.WriteTimeout = o.Timeout
	srv.ErrorLog = log.New(io.Discard, "", 0)
	ln, err := net.Listen("tcp", net.JoinHostPort(o.IP, strconv.Itoa(o.Port)))
	if err != nil {
		t.Fatalf("sink listen: %v", err)
	}
	s.srv = srv
	s.Addr = ln.Addr().String()
	s.Port = ln.Addr().(*net.TCPAddr).Port
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		_ = srv.Serve(countingListener{ln, s})
	}()
	t.Cleanup(s.Close)
	return s
}

// Close stops the sink before the test ends: it stops listening, closes
// every connection (as a server going away would) and waits for the server
// to return. Later calls do nothing.
func (s *Sink) Close() {
	s.stop.Do(func() {
		s.srv.Close()
		<-s.done
	})
}

// Messages returns a copy of the messages received so far, in order.
func (s *Sink) Messages() []SinkMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]SinkMessage(nil), s.msgs...)
}

// Conns returns how many TCP connections the sink accepted.
func (s *Sink) Conns() int { return int(s.conns.Load()) }

// OpenConns returns how many connections are open now.
func (s *Sink) OpenConns() int { return int(s.open.Load()) }

// PeakConns returns the most connections that were open at once.
func (s *Sink) PeakConns() int { return int(s.peak.Load()) }

type countingListener struct {
	net.Listener
	s *Sink
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.s.conns.Add(1)
		n := l.s.open.Add(1)
		for {
			p := l.s.peak.Load()
			if n <= p || l.s.peak.CompareAndSwap(p, n) {
				break
			}
		}
		c = &countedConn{Conn: c, open: &l.s.open}
	}
	return c, err
}

// countedConn takes itself off the open count when closed (once).
type countedConn struct {
	net.Conn
	open *atomic.Int32
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.open.Add(-1) })
	return c.Conn.Close()
}

type sinkSession struct {
	s      *Sink
	c      *smtp.Conn
	authed bool
	from   string
	opts   smtp.MailOptions
	rcpts  []string
}

var _ smtp.AuthSession = (*sinkSession)(nil)

func (ss *sinkSession) Reset()        { ss.from, ss.rcpts, ss.opts = "", nil, smtp.MailOptions{} }
func (ss *sinkSession) Logout() error { return nil }

func (ss *sinkSession) AuthMechanisms() []string {
	if ss.s.opts.AuthUser == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (ss *sinkSession) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(identity, user, pass string) error {
		if user != ss.s.opts.AuthUser || pass != ss.s.opts.AuthPass {
			return smtp.ErrAuthFailed
		}
		ss.authed = true
		return nil
	}), nil
}

func (ss *sinkSession) Mail(from string, opts *smtp.MailOptions) error {
	if ss.s.opts.AuthUser != "" && !ss.authed {
		return smtp.ErrAuthRequired
	}
	if ss.s.OnMail != nil {
		if err := ss.s.OnMail(from); err != nil {
			return err
		}
	}
	ss.from = from
	if opts != nil {
		ss.opts = *opts
	}
	return nil
}

func (ss *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if ss.s.OnRcpt != nil {
		if err := ss.s.OnRcpt(to); err != nil {
			return err
		}
	}
	ss.rcpts = append(ss.rcpts, to)
	return nil
}

func (ss *sinkSession) Data(r io.Reader) error {
	if ss.s.OnData != nil {
		return ss.s.OnData(ss.c, r)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	ss.s.mu.Lock()
	ip := ""
	if a, ok := ss.c.Conn().RemoteAddr().(*net.TCPAddr); ok {
		ip = a.IP.String()
	}
	ss.s.msgs = append(ss.s.msgs, SinkMessage{From: ss.from, Rcpts: ss.rcpts, Data: b, Opts: ss.opts, ClientIP: ip, HELO: ss.c.Hostname(), At: time.Now()})
	ss.s.mu.Unlock()
	return nil
}
