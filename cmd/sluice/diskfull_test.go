package main

import (
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// TestSpoolReserveRefusesMail drives the free-space reserve through the
// real binary: with a reserve larger than any disk, the spool is "full",
// so SMTP answers the end of data with 452 4.3.1 and HTTP with 507, the
// relay keeps serving (no crash, no hang); restarted with the reserve off,
// the same mail is accepted and delivered.
func TestSpoolReserveRefusesMail(t *testing.T) {
	smart := newSink(t)
	dir := t.TempDir()
	httpAddr := freePort(t)
	cfg := func(minFree string) string {
		return `local sluice = require("sluice")
sluice.spool { path = "{{SPOOL}}", min_free = "` + minFree + `" }
sluice.events { file = "{{EVENTS}}" }
sluice.listen_smtp { addr = "{{SMTP}}", relay_networks = { "127.0.0.1/32" } }
sluice.listen_http { addr = "` + httpAddr + `" }
sluice.stage("routing", { on_route = function(msg, rcpt)
  return sluice.route.relay { host = "127.0.0.1", port = ` + smart.port() + `, tls = "none" }
end })
`
	}
	r := newRelay(t, dir, cfg("1000000GB"))
	h := &httpEnv{t: t, relay: r, base: "http://" + httpAddr, client: &http.Client{Timeout: 30 * time.Second}}
	h.start()
	key, _ := h.createKey("disk")

	s := dialRaw(t, r.smtp)
	s.cmd("EHLO client.test")
	s.cmd("MAIL FROM:<app@sender.test>")
	s.cmd("RCPT TO:<bob@smart.test>")
	s.cmd("DATA")
	s.send(msgData("app@sender.test", "bob@smart.test", "full-1") + ".\r\n")
	if got := s.reply(); !strings.HasPrefix(got, "452 4.3.1") {
		t.Fatalf("end of data on a full spool: %s, want 452 4.3.1", got)
	}
	// The session goes on: the client may try again later.
	if got := s.cmd("NOOP"); !strings.HasPrefix(got, "250") {
		t.Fatalf("NOOP after the refusal: %s", got)
	}
	s.cmd("QUIT")
	body := httpJSON(t, map[string]any{"from": "app@sender.test", "to": []string{"bob@smart.test"}, "subject": "full-2", "text": "x"})
	if res := h.do("POST", "/v1/messages", key, body, nil); res.status != 507 || res.header.Get("Retry-After") == "" {
		t.Fatalf("HTTP on a full spool: %s (Retry-After %q), want 507 with Retry-After", res, res.header.Get("Retry-After"))
	}
	if !strings.Contains(r.logText(), "spool") {
		t.Fatalf("no log line about the spool:\n%s", r.logText())
	}
	r.stop()
	if smart.count() != 0 {
		t.Fatalf("%d messages delivered while the spool was full", smart.count())
	}

	// With the reserve off the same node accepts and delivers.
	if err := os.WriteFile(r.cfg, []byte(strings.NewReplacer("{{SMTP}}", r.smtp, "{{SPOOL}}", dir+"/spool", "{{EVENTS}}", r.events).Replace(cfg("0"))), 0o644); err != nil {
		t.Fatal(err)
	}
	h.start()
	if err := sendMail(r.smtp, "app@sender.test", []string{"bob@smart.test"}, msgData("app@sender.test", "bob@smart.test", "ok-1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the delivery", func() bool { return smart.count() == 1 })
}
