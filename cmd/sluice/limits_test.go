package main

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// limitsConfig: no relay_networks, so 127.0.0.1 is subject to the
// per-address limits; short timeouts.
const limitsConfig = `
local sluice = require("sluice")
sluice.node { name = "lim-1", hostname = "relay.lim.test" }
sluice.local_domains { "local.test" }
sluice.spool { path = "{{SPOOL}}" }
sluice.events { file = "{{EVENTS}}" }
sluice.listen_smtp {
  addr = "{{SMTP}}",
  max_connections_per_ip = 3,
  max_connection_rate_per_ip = "1000/minute",
  read_timeout = "500ms",
  write_timeout = "500ms",
}
`

// Issue 14 items 5 and 6 against the real binary: one client address gets
// at most max_connections_per_ip connections (the next gets 421 4.7.0);
// a partial command line at the read timeout ends the session with 421
// 4.4.2; a client that never reads its replies is disconnected after the
// write timeout.
func TestClientLimitsAndTimeouts(t *testing.T) {
	r := newRelay(t, t.TempDir(), limitsConfig)
	r.start() // its readiness probe holds no connection afterwards
	time.Sleep(100 * time.Millisecond)

	t.Run("per-address connections", func(t *testing.T) {
		var open []*rawSession
		for i := 0; i < 3; i++ {
			open = append(open, dialRaw(t, r.smtp))
		}
		c, err := net.DialTimeout("tcp", r.smtp, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(c)
		if !strings.HasPrefix(string(b), "421 4.7.0 ") || strings.Count(string(b), "\n") != 1 {
			t.Fatalf("connection 4 from one address: %q, want one 421 4.7.0 line then close", b)
		}
		for _, s := range open {
			s.c.Close()
		}
	})

	t.Run("partial line at read timeout", func(t *testing.T) {
		time.Sleep(200 * time.Millisecond) // the closed sessions are gone
		s := dialRaw(t, r.smtp)
		s.cmd("EHLO client.test")
		s.send("NOOP") // no CRLF
		start := time.Now()
		if line := s.reply(); !strings.HasPrefix(line, "421 4.4.2 ") {
			t.Fatalf("partial line at the read timeout: %q, want 421 4.4.2", line)
		}
		s.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if rest, err := io.ReadAll(s.br); err != nil || len(rest) != 0 {
			t.Fatalf("after 421: %q %v, want the connection closed", rest, err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("session ended after %v", d)
		}
	})

	t.Run("write timeout", func(t *testing.T) {
		s := dialRaw(t, r.smtp)
		// Never read: the EHLO replies fill the socket buffers, a reply
		// write times out, and the session must end (our writes then
		// fail) instead of reading commands forever.
		line := []byte(strings.Repeat("EHLO x\r\n", 1000))
		deadline := time.Now().Add(20 * time.Second)
		s.c.SetWriteDeadline(deadline)
		for {
			if _, err := s.c.Write(line); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Fatal("the relay still reads commands 20 s after its replies stopped being read")
				}
				break
			}
		}
	})
	if t.Failed() {
		return
	}
	if !strings.Contains(r.logText(), "max_connections_per_ip") {
		t.Errorf("the refusal is not logged:\n%s", r.logText())
	}
}
