package main

import (
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
)

const dsnExtConfig = `
local sluice = require("sluice")
sluice.node { name = "dsn-1", hostname = "relay.dsn.test" }
sluice.spool { path = "{{SPOOL}}" }
sluice.events { file = "{{EVENTS}}" }
sluice.listen_smtp { addr = "{{SMTP}}", relay_networks = { "127.0.0.1/32" } }
sluice.delivery {
  resolver = "{{DNS}}",
  port = {{MXPORT}},
  retry = { initial = "300ms", max = "300ms", jitter = 0 },
  queue_lifetime = "1h",
  delay_warning = "1s",
  idle_timeout = "1s",
}
`

// TestDSNExtension drives RFC 3461 through the real binary: DSN is
// advertised; NOTIFY=SUCCESS to a next hop without DSN gets a "relayed"
// report with the ORCPT and ENVID given; NOTIFY=NEVER gets no failure
// report while a recipient without NOTIFY gets one; NOTIFY=DELAY gets a
// "delayed" warning after delay_warning, at most once per interval; and
// every report goes to the quoted sender byte for byte.
func TestDSNExtension(t *testing.T) {
	dns := dnstest.NewServer(t)
	mx := newSink(t) // no DSN extension: Sluice owes the success report
	dns.AddMX("mx.test", 10, "mx1.mx.test")
	dns.AddA("mx1.mx.test", "127.0.0.1")
	dns.AddMX("sender.test", 10, "mx1.mx.test")
	mx.rcptReply = func(rcpt string) error {
		switch {
		case strings.HasPrefix(rcpt, "fail"):
			return smtpErr(550, [3]int{5, 1, 1}, "user unknown")
		case strings.HasPrefix(rcpt, "slow"):
			return smtpErr(451, [3]int{4, 2, 1}, "mailbox busy")
		}
		return nil
	}
	cfg := strings.NewReplacer("{{DNS}}", dns.Addr(), "{{MXPORT}}", mx.port()).Replace(dsnExtConfig)
	r := newRelay(t, t.TempDir(), cfg)
	r.start()

	s := dialRaw(t, r.smtp)
	if ehlo := s.cmd("EHLO client.test"); !strings.HasPrefix(ehlo, "250") {
		t.Fatalf("EHLO: %s", ehlo)
	}
	sender := `"odd sender"@sender.test`
	for _, c := range []struct{ line, want string }{
		{"MAIL FROM:<" + sender + "> RET=HDRS ENVID=env+2B1", "250"},
		{"RCPT TO:<ok@mx.test> NOTIFY=SUCCESS ORCPT=rfc822;ok@mx.test", "250"},
		{"RCPT TO:<fail1@mx.test> NOTIFY=NEVER", "250"},
		{"RCPT TO:<fail2@mx.test>", "250"},
		{"RCPT TO:<slow@mx.test> NOTIFY=DELAY,FAILURE", "250"},
		{"RCPT TO:<x@mx.test> NOTIFY=NEVER,SUCCESS", "501"},
		{"DATA", "354"},
	} {
		if got := s.cmd(c.line); !strings.HasPrefix(got, c.want) {
			t.Fatalf("%s: %s, want %s", c.line, got, c.want)
		}
	}
	s.send(msgData(sender, "ok@mx.test", "dsn-ext") + ".\r\n")
	if got := s.reply(); !strings.HasPrefix(got, "250") {
		t.Fatalf("end of data: %s", got)
	}
	s.cmd("QUIT")

	reports := func() []sinkMsg {
		var out []sinkMsg
		for _, m := range mx.messages() {
			if m.From == "" {
				out = append(out, m)
			}
		}
		return out
	}
	has := func(sub string) bool {
		for _, m := range reports() {
			if strings.Contains(httpNormNL(string(m.Data)), sub) {
				return true
			}
		}
		return false
	}
	waitFor(t, "the relayed, failed and delayed reports", func() bool {
		return has("Action: relayed") && has("Final-Recipient: rfc822; fail2@mx.test") && has("Action: delayed")
	})
	all := ""
	for _, m := range reports() {
		if len(m.Rcpts) != 1 || m.Rcpts[0] != sender {
			t.Errorf("a report went to %q, want [%s]", m.Rcpts, sender)
		}
		all += httpNormNL(string(m.Data)) + "\n----\n"
	}
	for _, want := range []string{
		"Original-Envelope-Id: env+1", // ENVID=env+2B1, xtext-decoded
		"Original-Recipient: rfc822; ok@mx.test",
		"Final-Recipient: rfc822; slow@mx.test",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("no report has %q:\n%s", want, all)
		}
	}
	if strings.Contains(all, "fail1@mx.test") {
		t.Errorf("NOTIFY=NEVER recipient reported:\n%s", all)
	}
	// Warnings come at most once per delay_warning: no more than the
	// intervals that have passed (plus the first).
	delayed := strings.Count(all, "Action: delayed")
	if delayed < 1 || delayed > 3 {
		t.Errorf("%d delay warnings so soon", delayed)
	}
}
