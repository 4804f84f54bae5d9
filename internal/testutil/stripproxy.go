package testutil

import (
	"bufio"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// StripProxy is a man in the middle for SMTP: a TCP proxy that forwards
// every byte between a client and Target, except that it removes the
// STARTTLS capability from the server's EHLO replies (a STARTTLS
// downgrade attack, RFC 3207 section 6). Tests point an MX host's address
// at it to check that a TLS policy notices.
type StripProxy struct {
	Addr   string // host:port it listens on
	Target string
	// Stripped counts the EHLO replies it removed STARTTLS from.
	stripped atomic.Int32
	l        net.Listener
	wg       sync.WaitGroup
}

// StartStripProxy listens on addr ("127.0.0.9:2525") and forwards to
// target; it stops when the test ends.
func StartStripProxy(t testing.TB, addr, target string) *StripProxy {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("strip proxy: %v", err)
	}
	p := &StripProxy{Addr: l.Addr().String(), Target: target, l: l}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		l.Close()
		p.wg.Wait()
	})
	return p
}

// Stripped is how many EHLO replies lost their STARTTLS line.
func (p *StripProxy) Stripped() int { return int(p.stripped.Load()) }

func (p *StripProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.Target)
		if err != nil {
			c.Close()
			continue
		}
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			_, _ = io.Copy(s, c)
			s.Close()
		}()
		go func() {
			defer p.wg.Done()
			p.down(c, s)
			c.Close()
		}()
	}
}

// down copies the server's replies to the client one reply at a time,
// without STARTTLS lines.
func (p *StripProxy) down(c io.Writer, s io.Reader) {
	br := bufio.NewReader(s)
	var reply []string
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		reply = append(reply, line)
		if len(line) >= 4 && line[3] == '-' {
			continue
		}
		var out []string
		for _, l := range reply {
			if len(l) > 4 && strings.EqualFold(strings.TrimSpace(l[4:]), "STARTTLS") {
				continue
			}
			out = append(out, l)
		}
		if len(out) < len(reply) {
			p.stripped.Add(1)
			for i := range out {
				sep := "-"
				if i == len(out)-1 {
					sep = " "
				}
				out[i] = out[i][:3] + sep + out[i][4:]
			}
		}
		reply = reply[:0]
		if _, err := io.WriteString(c, strings.Join(out, "")); err != nil {
			return
		}
	}
}
