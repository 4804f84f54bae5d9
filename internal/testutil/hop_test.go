package testutil

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"
)

// TestHopIsStrict: the hop refuses what a strict peer refuses, so that
// tests using it can fail.
func TestHopIsStrict(t *testing.T) {
	h := StartHop(t, HopOptions{Extensions: []string{"SIZE"}})
	c, err := net.Dial("tcp", h.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	cmd := func(line string) string {
		if line != "" {
			c.Write([]byte(line + "\r\n"))
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var last string
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			if len(l) < 4 || l[3] != '-' {
				last = strings.TrimSpace(l)
				break
			}
		}
		return last[:3]
	}
	cmd("") // greeting
	for _, tc := range []struct{ line, want string }{
		{"EHLO c.test", "250"},
		{"MAIL FROM:<odd sender@a.test>", "501"},
		{"MAIL FROM:<a@a.test> BODY=8BITMIME", "555"},
		{"MAIL FROM:<a@a.test> SMTPUTF8", "555"},
		{"MAIL FROM:<jörg@a.test>", "553"},
		{`MAIL FROM:<"odd sender"@a.test> SIZE=10`, "250"},
		{"RCPT TO:<a@b@c.test>", "501"},
		{"RCPT TO:<b@c.test> NOTIFY=SUCCESS", "555"},
		{`RCPT TO:<"odd user"@c.test>`, "250"},
		{`RCPT TO:<"a\"b"@c.test>`, "250"},
		{"RCPT TO:<a..b@c.test>", "501"},
		{"DATA", "354"},
		{"hello\r\n.", "250"},
	} {
		if got := cmd(tc.line); got != tc.want {
			t.Errorf("%q: %s, want %s", tc.line, got, tc.want)
		}
	}
	m := h.Messages()
	if len(m) != 1 || m[0].Mail != `MAIL FROM:<"odd sender"@a.test> SIZE=10` || len(m[0].Rcpts) != 2 || string(m[0].Data) != "hello\r\n" {
		t.Fatalf("recorded %+v", m)
	}
}
