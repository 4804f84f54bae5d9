package testutil

import (
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// fatalTB records Fatalf and stops the goroutine as testing.T does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = format
	runtime.Goexit()
}

func TestWaitFor(t *testing.T) {
	var n atomic.Int32
	go func() {
		for i := 0; i < 3; i++ {
			n.Add(1)
		}
	}()
	WaitFor(t, "three increments", func() bool { return n.Load() == 3 })

	f := &fatalTB{TB: t}
	done := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(done)
		WaitForWithin(f, 20*time.Millisecond, "never", func() bool { return false })
	}()
	<-done
	if !strings.Contains(f.msg, "timed out") {
		t.Fatalf("WaitForWithin did not fail: %q", f.msg)
	}
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Fatalf("gave up after %v", d)
	}
}

func TestTempFiles(t *testing.T) {
	dir := TempFiles(t, map[string]string{"a.lua": "A", "sub/dir/b.txt": "B"})
	for name, want := range map[string]string{"a.lua": "A", "sub/dir/b.txt": "B"} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(got) != want {
			t.Fatalf("%s: %q, %v", name, got, err)
		}
	}
}

func TestSelfSignedCert(t *testing.T) {
	c := SelfSignedCert(t, "mx.test", "127.0.0.1")
	if _, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile); err != nil {
		t.Fatalf("files: %v", err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", c.TLS)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_ = conn.(*tls.Conn).Handshake()
			conn.Close()
		}
	}()
	for _, name := range []string{"mx.test", "127.0.0.1"} {
		conn, err := tls.Dial("tcp", ln.Addr().String(), c.ClientTLS(name))
		if err != nil {
			t.Fatalf("verify as %s: %v", name, err)
		}
		conn.Close()
	}
	if conn, err := tls.Dial("tcp", ln.Addr().String(), c.ClientTLS("other.test")); err == nil {
		conn.Close()
		t.Fatal("certificate verified for a name it does not carry")
	}
}

func TestSink(t *testing.T) {
	s := StartSink(t, SinkOptions{})
	s.OnRcpt = func(to string) error {
		if to == "no@dest.test" {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		return nil
	}
	c, err := smtp.Dial(s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Mail("a@src.test", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("ok@dest.test", nil); err != nil {
		t.Fatal(err)
	}
	var se *smtp.SMTPError
	if err := c.Rcpt("no@dest.test", nil); !errors.As(err, &se) || se.Code != 550 {
		t.Fatalf("refused recipient: %v", err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("Subject: x\r\n\r\n.dot\r\n"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	c.Quit()
	m := s.Messages()
	if len(m) != 1 || m[0].From != "a@src.test" || len(m[0].Rcpts) != 1 || m[0].Rcpts[0] != "ok@dest.test" ||
		string(m[0].Data) != "Subject: x\r\n\r\n.dot\r\n" {
		t.Fatalf("messages %+v", m)
	}
	if s.Conns() != 1 {
		t.Fatalf("%d connections", s.Conns())
	}
}

func TestSinkAuth(t *testing.T) {
	s := StartSink(t, SinkOptions{AuthUser: "u", AuthPass: "p"})
	c, err := smtp.Dial(s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Mail("a@src.test", nil); err == nil {
		t.Fatal("MAIL accepted before AUTH")
	}
	if err := c.Auth(sasl.NewPlainClient("", "u", "wrong")); err == nil {
		t.Fatal("wrong password accepted")
	}
	if err := c.Auth(sasl.NewPlainClient("", "u", "p")); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("a@src.test", nil); err != nil {
		t.Fatalf("MAIL after AUTH: %v", err)
	}
}

func TestSinkClose(t *testing.T) {
	s := StartSink(t, SinkOptions{})
	c, err := smtp.Dial(s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s.Close()
	if err := c.Noop(); err == nil {
		t.Fatal("connection still open after Close")
	}
	if c2, err := smtp.Dial(s.Addr); err == nil {
		c2.Close()
		t.Fatal("still listening after Close")
	}
}
