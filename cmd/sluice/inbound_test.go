package main

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// Issue 13, receiving side, against the real binary: quoted local parts
// reach the next hop byte for byte (the sink's parser, our patched
// go-smtp, would refuse them unquoted); what is not an address, or could
// be routed further by a next hop, is refused at MAIL/RCPT.
func TestInboundAddresses(t *testing.T) {
	e := newEnv(t, nil)
	e.relay.start()
	s := dialRaw(t, e.relay.smtp)
	if r := s.cmd("EHLO client.test"); !strings.HasPrefix(r, "250") {
		t.Fatalf("EHLO: %s", r)
	}
	if r := s.cmd(`MAIL FROM:<"odd sender"@sender.test>`); r != "250 2.1.0 Sender OK" {
		t.Fatalf("MAIL: %s", r)
	}
	for _, rc := range []string{`"odd user"@smart.test`, `"plain"@smart.test`} {
		if r := s.cmd("RCPT TO:<" + rc + ">"); r != "250 2.1.5 Recipient OK" {
			t.Fatalf("RCPT %s: %s", rc, r)
		}
	}
	for rc, want := range map[string]string{
		"victim%example.org@local.test":   "553 5.1.3 ",
		"victim@example.org@local.test":   "553 5.1.3 ",
		`"victim@example.org"@smart.test`: "553 5.1.3 ",
		"host!victim@local.test":          "553 5.1.3 ",
		"a\x00b@local.test":               "501 5.1.3 ",
		"bad..dots@local.test":            "501 5.1.3 ",
		"ü@local.test":                    "553 5.6.7 ", // no SMTPUTF8
	} {
		if r := s.cmd("RCPT TO:<" + rc + ">"); !strings.HasPrefix(r, want) {
			t.Errorf("RCPT %q: %s, want %s", rc, r, want)
		}
	}
	if r := s.cmd("RCPT TO:<bob@smart.test> NOTIFY=NEVER,DELAY"); !strings.HasPrefix(r, "501 5.5.4 ") {
		t.Errorf("NOTIFY=NEVER,DELAY: %s", r)
	}
	s.cmd("DATA")
	s.send("Subject: quoted\r\n\r\nbody\r\n.\r\n")
	if r := s.reply(); !strings.HasPrefix(r, "250 2.0.0") {
		t.Fatalf("DATA: %s", r)
	}
	// A MAIL FROM with NUL, DEL or a source route is refused, not taken
	// with a 250 and bounced later.
	for from, want := range map[string]string{
		"a\x00b@sender.test":             "501 5.1.7 ",
		"a\x7fb@sender.test":             "501 5.1.7 ",
		"victim%example.org@sender.test": "553 5.1.7 ",
		`"a@b"@sender.test`:              "553 5.1.7 ",
		"not an address":                 "501 5.1.7 ",
	} {
		if r := s.cmd("MAIL FROM:<" + from + ">"); !strings.HasPrefix(r, want) {
			t.Errorf("MAIL %q: %s, want %s", from, r, want)
		}
	}
	// RFC 3461 parameters: invalid combinations and values are refused.
	if r := s.cmd("MAIL FROM:<a@sender.test> RET=ALL"); !strings.HasPrefix(r, "501 5.5.4 ") {
		t.Errorf("RET=ALL: %s", r)
	}
	waitFor(t, "the quoted message at the smarthost", func() bool { return e.smart.count() >= 1 })
	m := e.smart.messages()[0]
	if m.From != `"odd sender"@sender.test` {
		t.Errorf("next hop got MAIL FROM:<%s>", m.From)
	}
	if want := []string{`"odd user"@smart.test`, "plain@smart.test"}; !slices.Equal(m.Rcpts, want) {
		t.Errorf("next hop got RCPT TO %q", m.Rcpts)
	}
	s.cmd("QUIT")
	if n := e.smart.count() + e.mx.count(); n != 1 {
		t.Errorf("%d messages delivered, want 1", n)
	}
}

// Issue 13, receiving side, against the real binary: a pipelining client
// gets exactly one reply per command around a too-long line; a BDAT chunk
// boundary inside a long line is fine; header defects are accepted and
// delivered unchanged; a message with too many hops is refused.
func TestInboundDataSync(t *testing.T) {
	e := newEnv(t, nil)
	e.relay.start()
	s := dialRaw(t, e.relay.smtp)
	s.cmd("EHLO client.test")

	long := "Subject: long line\r\n\r\n" + strings.Repeat("a", 1200) + "\r\nend\r\n"
	next := "Subject: after the long line\r\n\r\nbody\r\n"
	s.send("MAIL FROM:<a@sender.test>\r\nRCPT TO:<bob@smart.test>\r\nDATA\r\n" + long + ".\r\n" +
		"MAIL FROM:<a@sender.test>\r\nRCPT TO:<bob@smart.test>\r\nDATA\r\n" + next + ".\r\nNOOP\r\n")
	var got []string
	for range 9 {
		got = append(got, s.reply()[:3])
	}
	if g := strings.Join(got, " "); g != "250 250 354 554 250 250 354 250 250" {
		t.Fatalf("pipelined replies %s", g)
	}

	// BDAT: the chunk boundary falls inside a 995-octet line.
	line := strings.Repeat("x", 993) + "\r\n"
	msg := "Subject: bdat\r\n\r\n" + line + line
	cut := len(msg) - len(line) - 5
	s.send(fmt.Sprintf("MAIL FROM:<a@sender.test>\r\nRCPT TO:<bob@smart.test>\r\nBDAT %d\r\n%sBDAT %d LAST\r\n%s",
		cut, msg[:cut], len(msg)-cut, msg[cut:]))
	for i, want := range []string{"250", "250", "250", "250 2.0.0 OK: queued"} {
		if r := s.reply(); !strings.HasPrefix(r, want) {
			t.Fatalf("BDAT reply %d: %s", i, r)
		}
	}

	// Header defects, delivered as they came after our fields (an mbox
	// "From " line first is framing, dropped: the rest is delivered).
	mbox := "From someone@sender.test Mon Nov 30 05:00:00 2026\r\n"
	defects := []string{
		"Subject: no blank line\r\nbody right after the header\r\n",
		"only a body\r\nno header at all\r\n",
		"Subject: mbox\r\n\r\nbody\r\n",
	}
	for i, d := range defects {
		if i == 2 {
			d = mbox + d
		}
		s.cmd("MAIL FROM:<a@sender.test>")
		s.cmd("RCPT TO:<bob@smart.test>")
		s.cmd("DATA")
		s.send(d + ".\r\n")
		if r := s.reply(); !strings.HasPrefix(r, "250 2.0.0") {
			t.Errorf("defect %q: %s", d, r)
		}
	}

	// Too many hops: 100 Received fields (the default max_hops).
	s.cmd("MAIL FROM:<a@sender.test>")
	s.cmd("RCPT TO:<bob@smart.test>")
	s.cmd("DATA")
	s.send(strings.Repeat("Received: from a.test by b.test; Mon, 30 Nov 2026 05:00:00 +0000\r\n", 100) + "Subject: loop\r\n\r\nx\r\n.\r\n")
	if r := s.reply(); !strings.HasPrefix(r, "554 5.4.6 ") {
		t.Errorf("100 hops: %s", r)
	}
	s.cmd("QUIT")

	waitFor(t, "5 messages at the smarthost", func() bool { return e.smart.count() >= 5 })
	byBody := map[string]bool{}
	for _, m := range e.smart.messages() {
		byBody[string(m.Data)] = true
		if strings.Contains(string(m.Data), "Subject: long line") || strings.Contains(string(m.Data), "Subject: loop") {
			t.Errorf("a refused message was delivered:\n%.300s", m.Data)
		}
	}
	for _, want := range append([]string{next, msg}, defects...) {
		found := false
		for data := range byBody {
			if strings.HasSuffix(data, "\r\n"+want) {
				found = true
			}
		}
		if !found {
			t.Errorf("not delivered unchanged: %q", want)
		}
	}
	if n := e.smart.count(); n != 5 {
		t.Errorf("%d messages at the smarthost, want 5", n)
	}
}
