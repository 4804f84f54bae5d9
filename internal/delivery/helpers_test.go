package delivery_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// newSink starts a testutil.Sink for these tests: on 127.0.0.2 unless o
// says otherwise (the MX records of the tests point there), with 10-second
// server timeouts.
func newSink(t testing.TB, o testutil.SinkOptions) *testutil.Sink {
	t.Helper()
	if o.IP == "" {
		o.IP = "127.0.0.2"
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	return testutil.StartSink(t, o)
}

// env is a DNS server plus a Dialer pointed at it.
type env struct {
	DNS *dnstest.Server
	D   *delivery.Dialer
}

// newEnv returns a Dialer whose MX deliveries go to port (the sinks'),
// with short timeouts.
func newEnv(t testing.TB, port int) *env {
	t.Helper()
	dns := dnstest.NewServer(t)
	r, err := dnsx.New(dnsx.Options{Server: dns.Addr(), Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	d := delivery.NewDialer(config.Delivery{
		Hostname:       "sluice.test",
		Port:           port,
		ConnectTimeout: 2 * time.Second,
		CommandTimeout: 5 * time.Second,
		DataTimeout:    5 * time.Second,
	}, r)
	return &env{DNS: dns, D: d}
}

// message returns an RFC 5322 message of about size bytes, CRLF lines.
func message(size int) []byte {
	var b strings.Builder
	b.WriteString("From: app@sender.test\r\nTo: bob@example.test\r\nSubject: test\r\nMessage-ID: <1@sender.test>\r\n\r\n")
	for b.Len() < size {
		b.WriteString("The quick brown fox jumps over the lazy dog 0123456789 abcdefghij\r\n")
	}
	return []byte(b.String())
}

// wantPE checks that err is a *pipeline.Error with code and enhanced code.
func wantPE(t testing.TB, err error, code int, enh string) *pipeline.Error {
	t.Helper()
	var pe *pipeline.Error
	if !errors.As(err, &pe) {
		t.Fatalf("err = %v (%T), want *pipeline.Error %d %s", err, err, code, enh)
	}
	if pe.Code != code || (enh != "" && pe.EnhancedOrDefault().String() != enh) {
		t.Fatalf("err = %d %s %q (cause %v), want %d %s", pe.Code, pe.EnhancedOrDefault(), pe.Message, pe.Cause, code, enh)
	}
	if pipeline.IsTemporary(err) != (code/100 == 4) {
		t.Fatalf("IsTemporary(%v) disagrees with code %d", err, code)
	}
	return pe
}

func dial(t testing.TB, e *env, route *pipeline.Route, domain string) *delivery.Session {
	t.Helper()
	s, err := e.D.Dial(context.Background(), route, domain)
	if err != nil {
		t.Fatalf("Dial(%s): %v", domain, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// scripted is a hand-driven SMTP server for the cases go-smtp's server
// cannot produce. fn runs once per connection, in its own goroutine.
type scripted struct {
	Addr  string
	Port  int
	conns atomic.Int32
}

type peer struct {
	t testing.TB
	c net.Conn
	r *bufio.Reader
}

// send writes a reply; lines may contain "\r\n" for multi-line replies.
func (p *peer) send(s string) {
	p.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(p.c, s+"\r\n"); err != nil {
		p.t.Logf("scripted send: %v", err)
	}
}

// read returns the next line without CRLF, or "" on error.
func (p *peer) read() string {
	p.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	l, err := p.r.ReadString('\n')
	if err != nil {
		return ""
	}
	return strings.TrimRight(l, "\r\n")
}

// expect reads a line and fails the test unless it starts with prefix.
func (p *peer) expect(prefix string) string {
	l := p.read()
	if !strings.HasPrefix(strings.ToUpper(l), strings.ToUpper(prefix)) {
		p.t.Errorf("scripted server: got %q, want %q...", l, prefix)
	}
	return l
}

// readData reads a DATA body up to the terminating dot line.
func (p *peer) readData() string {
	var b strings.Builder
	for {
		l := p.read()
		if l == "." {
			return b.String()
		}
		if l == "" && b.Len() > 1<<20 {
			return b.String()
		}
		b.WriteString(l + "\r\n")
	}
}

// ehlo does the usual greeting and EHLO with the given extensions.
func (p *peer) ehlo(ext ...string) {
	p.send("220 scripted.test ESMTP")
	p.expect("EHLO ")
	lines := append([]string{"scripted.test"}, ext...)
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		p.send("250" + sep + l)
	}
}

func newScripted(t testing.TB, ip string, port int, fn func(p *peer)) *scripted {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("scripted listen: %v", err)
	}
	s := &scripted{Addr: ln.Addr().String(), Port: ln.Addr().(*net.TCPAddr).Port}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				fn(&peer{t: t, c: c, r: bufio.NewReader(c)})
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return s
}

func (s *scripted) Conns() int { return int(s.conns.Load()) }
