package loadgen

import (
	"bytes"
	"io"
	"log"
	"net"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-smtp"
)

// testRelay is a tiny forwarding relay: a go-smtp server whose sessions
// forward every message synchronously to next over one reused go-smtp client
// connection per session. The policy hooks let tests make it misbehave.
type testRelay struct {
	addr     string
	next     string
	srv      *smtp.Server
	received atomic.Int64
	// hooks: return a non-nil error to reject at that stage.
	onRcpt func(to string) error
	onData func() error
	drop   bool // accept but do not forward
}

func startRelay(t *testing.T, next string) *testRelay {
	t.Helper()
	r := &testRelay{next: next}
	r.srv = smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &relaySession{r: r}, nil
	}))
	r.srv.Domain = "relay.test"
	r.srv.ErrorLog = log.New(io.Discard, "", 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	go func() { _ = r.srv.Serve(ln) }()
	t.Cleanup(func() { r.srv.Close() })
	return r
}

type relaySession struct {
	r        *testRelay
	from     string
	to       []string
	buf      bytes.Buffer
	upstream *smtp.Client
}

func (s *relaySession) Reset() { s.from, s.to = "", s.to[:0] }
func (s *relaySession) Logout() error {
	if s.upstream != nil {
		s.upstream.Quit()
	}
	return nil
}
func (s *relaySession) Mail(from string, _ *smtp.MailOptions) error { s.from = from; return nil }
func (s *relaySession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if s.r.onRcpt != nil {
		if err := s.r.onRcpt(to); err != nil {
			return err
		}
	}
	s.to = append(s.to, to)
	return nil
}

func (s *relaySession) Data(r io.Reader) error {
	s.buf.Reset()
	if _, err := s.buf.ReadFrom(r); err != nil {
		return err
	}
	if s.r.onData != nil {
		if err := s.r.onData(); err != nil {
			return err
		}
	}
	s.r.received.Add(1)
	if s.r.drop {
		return nil
	}
	if err := s.forward(); err != nil {
		if s.upstream != nil {
			s.upstream.Close()
			s.upstream = nil
		}
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 0}, Message: "forward: " + err.Error()}
	}
	return nil
}

func (s *relaySession) forward() error {
	if s.upstream == nil {
		c, err := smtp.Dial(s.r.next)
		if err != nil {
			return err
		}
		if err := c.Hello("relay.test"); err != nil {
			c.Close()
			return err
		}
		s.upstream = c
	}
	c := s.upstream
	if err := c.Mail(s.from, nil); err != nil {
		return err
	}
	for _, to := range s.to {
		if err := c.Rcpt(to, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(s.buf.Bytes()); err != nil {
		return err
	}
	return w.Close()
}

// sinkListener reserves a port for the sink, so the relay knows where to forward.
func sinkListener(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}
