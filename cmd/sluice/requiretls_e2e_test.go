package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// requireTLSConfig: an SMTP listener with STARTTLS, the HTTP API, and
// relay routes with tls = "required" to a sink that offers REQUIRETLS
// (rt.test), one that does not (nort.test) and one started later
// (later.test). sender.test (bounces) goes by MX to h.mx.
const requireTLSConfig = `
local sluice = require("sluice")
sluice.node { name = "rt-e2e-1", hostname = "relay.e2e.test" }
sluice.spool { path = "{{SPOOL}}" }
sluice.events { file = "{{EVENTS}}" }
sluice.listen_smtp { addr = "{{SMTP}}", relay_networks = { "127.0.0.1/32" },
  tls = { cert = "{{CERT}}", key = "{{KEY}}" } }
sluice.listen_http { addr = "{{HTTP}}" }
sluice.delivery {
  resolver = "{{DNS}}",
  port = {{MXPORT}},
  retry = { initial = "200ms", max = "200ms", jitter = 0 },
  queue_lifetime = "1h",
  idle_timeout = "1s",
}
sluice.stage("routing", {
  on_route = function(msg, rcpt)
    local ports = { ["rt.test"] = {{RTPORT}}, ["nort.test"] = {{NORTPORT}}, ["later.test"] = {{LATERPORT}} }
    if ports[rcpt.domain] then
      return sluice.route.relay { host = "127.0.0.1", port = ports[rcpt.domain], tls = "required" }
    end
    return sluice.route.mx()
  end,
})
`

// TestREQUIRETLSEndToEnd, against the real binary: a client sends over
// STARTTLS with MAIL ... REQUIRETLS (and by HTTP with "require_tls": true);
// a next hop with a verified certificate (the test CA, trusted through
// SSL_CERT_FILE) that offers REQUIRETLS gets the message with REQUIRETLS
// on MAIL; one that does not offer it gets nothing, and the recipient
// bounces with 5.7.30 (class PolicyRelated), the DSN returning headers
// only although RET=FULL; the flag survives a restart; events carry
// require_tls.
func TestREQUIRETLSEndToEnd(t *testing.T) {
	cert := testutil.SelfSignedCert(t, "127.0.0.1", "relay.e2e.test")
	t.Setenv("SSL_CERT_FILE", cert.CertFile) // the binary's system roots: the test CA
	rt := testutil.StartSink(t, testutil.SinkOptions{TLS: cert.TLS, RequireTLS: true})
	noRT := testutil.StartSink(t, testutil.SinkOptions{TLS: cert.TLS})
	laterAddr := freePort(t)
	_, laterPort, _ := net.SplitHostPort(laterAddr)

	h := &httpEnv{t: t, dns: dnstest.NewServer(t), mx: newSink(t), smart: newSink(t)}
	h.dns.AddMX("sender.test", 10, "mx1.sender.test")
	h.dns.AddA("mx1.sender.test", "127.0.0.1")
	key := h.startWith(requireTLSConfig, h.dns.Addr(), "{{CERT}}", cert.CertFile, "{{KEY}}", cert.KeyFile,
		"{{RTPORT}}", strconv.Itoa(rt.Port), "{{NORTPORT}}", strconv.Itoa(noRT.Port), "{{LATERPORT}}", laterPort)

	send := func(to string, requireTLS bool) {
		t.Helper()
		// (That it is not offered in clear text: internal/smtpsrc.)
		c, err := gosmtp.DialStartTLS(h.relay.smtp, cert.ClientTLS("127.0.0.1"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if ok, _ := c.Extension("REQUIRETLS"); !ok {
			t.Fatal("REQUIRETLS not offered after STARTTLS")
		}
		if err := c.Mail("app@sender.test", &gosmtp.MailOptions{RequireTLS: requireTLS, Return: gosmtp.DSNReturnFull}); err != nil {
			t.Fatal(err)
		}
		if err := c.Rcpt(to, nil); err != nil {
			t.Fatal(err)
		}
		w, err := c.Data()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(w, "From: app@sender.test\r\nTo: %s\r\nSubject: secret\r\n\r\nconfidential body\r\n", to)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		c.Quit()
	}
	event := func(typ, rcpt string) pipeline.Event {
		t.Helper()
		var found pipeline.Event
		h.relay.waitEvents(typ+" for "+rcpt, func(evs []pipeline.Event) bool {
			for _, e := range evs {
				if e.Type == typ && e.Recipient == rcpt {
					found = e
					return true
				}
			}
			return false
		})
		return found
	}
	sawREQUIRETLS := func(s *testutil.Sink, rcpt string) bool {
		for _, m := range s.Messages() {
			if len(m.Rcpts) == 1 && m.Rcpts[0] == rcpt {
				return m.Opts.RequireTLS
			}
		}
		t.Fatalf("%s not received", rcpt)
		return false
	}

	t.Run("SMTP: delivered to a validated hop with REQUIRETLS", func(t *testing.T) {
		send("a@rt.test", true)
		ev := event(pipeline.EventDelivered, "a@rt.test")
		if !ev.RequireTLS || ev.Remote == nil || ev.Remote.TLSPolicy != pipeline.TLSRequired || !ev.Remote.TLSValidated {
			t.Fatalf("delivered event %+v remote %+v", ev, ev.Remote)
		}
		if !sawREQUIRETLS(rt, "a@rt.test") {
			t.Fatal("the next hop did not get REQUIRETLS on MAIL")
		}
	})
	t.Run("SMTP: hop without REQUIRETLS: bounced 5.7.30, DSN headers only", func(t *testing.T) {
		send("b@nort.test", true)
		ev := event(pipeline.EventBounced, "b@nort.test")
		if !ev.RequireTLS || ev.Response == nil || ev.Response.Enhanced != "5.7.30" || ev.BounceClass != "PolicyRelated" {
			t.Fatalf("bounced event %+v response %+v", ev, ev.Response)
		}
		if len(noRT.Messages()) != 0 {
			t.Fatal("the hop without REQUIRETLS got the message")
		}
		dsn := event(pipeline.EventDelivered, "app@sender.test")
		if !dsn.RequireTLS {
			t.Fatalf("the DSN's events lack require_tls: %+v", dsn)
		}
		waitFor(t, "the DSN at the sender's MX", func() bool { return h.mx.count() == 1 })
		data := string(h.mx.messages()[0].Data)
		if !strings.Contains(data, "text/rfc822-headers") || strings.Contains(data, "confidential body") {
			t.Fatalf("the DSN returned more than the header (RET=FULL must be ignored):\n%s", data)
		}
	})
	t.Run("SMTP: a client's null-sender REQUIRETLS message is held to it", func(t *testing.T) {
		// Only DSNs this relay generated (above: delivered in clear text
		// to the sender's MX) may go without REQUIRETLS; a client's
		// MAIL FROM:<> REQUIRETLS may not.
		c, err := gosmtp.DialStartTLS(h.relay.smtp, cert.ClientTLS("127.0.0.1"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Mail("", &gosmtp.MailOptions{RequireTLS: true}); err != nil {
			t.Fatal(err)
		}
		if err := c.Rcpt("n@nort.test", nil); err != nil {
			t.Fatal(err)
		}
		w, err := c.Data()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprint(w, "From: <>\r\nTo: n@nort.test\r\nSubject: null\r\n\r\nconfidential body\r\n")
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		c.Quit()
		ev := event(pipeline.EventBounced, "n@nort.test")
		if !ev.RequireTLS || ev.Response == nil || ev.Response.Enhanced != "5.7.30" {
			t.Fatalf("bounced event %+v response %+v", ev, ev.Response)
		}
		if len(noRT.Messages()) != 0 {
			t.Fatal("the hop without REQUIRETLS got a client's null-sender REQUIRETLS message")
		}
	})
	t.Run("SMTP: without REQUIRETLS the same hop gets it", func(t *testing.T) {
		send("c@nort.test", false)
		if ev := event(pipeline.EventDelivered, "c@nort.test"); ev.RequireTLS {
			t.Fatalf("require_tls on a message without it: %+v", ev)
		}
	})
	t.Run("HTTP require_tls", func(t *testing.T) {
		post := func(to string, v any) httpResp {
			body, _ := json.Marshal(map[string]any{"from": "app@sender.test", "to": to, "subject": "hi", "text": "hi", "require_tls": v})
			return h.do("POST", "/v1/messages", key, body, nil)
		}
		if r := post("d@rt.test", true); r.status != http.StatusAccepted {
			t.Fatalf("POST: %s", r)
		}
		if ev := event(pipeline.EventDelivered, "d@rt.test"); !ev.RequireTLS || !sawREQUIRETLS(rt, "d@rt.test") {
			t.Fatalf("delivered without REQUIRETLS: %+v", ev)
		}
		if r := post("e@nort.test", true); r.status != http.StatusAccepted {
			t.Fatalf("POST: %s", r)
		}
		if ev := event(pipeline.EventBounced, "e@nort.test"); ev.Response == nil || ev.Response.Enhanced != "5.7.30" {
			t.Fatalf("bounced event %+v", ev)
		}
		r := post("f@rt.test", "yes")
		if r.status != http.StatusBadRequest || r.apiError().Error.Field != "require_tls" {
			t.Fatalf("require_tls \"yes\": %s, want 400 naming require_tls", r)
		}
	})
	t.Run("the flag survives a restart", func(t *testing.T) {
		send("g@later.test", true)
		event(pipeline.EventDeferred, "g@later.test")
		h.relay.stop()
		ip, port, _ := net.SplitHostPort(laterAddr)
		p, _ := strconv.Atoi(port)
		later := testutil.StartSink(t, testutil.SinkOptions{IP: ip, Port: p, TLS: cert.TLS, RequireTLS: true})
		h.start()
		if ev := event(pipeline.EventDelivered, "g@later.test"); !ev.RequireTLS {
			t.Fatalf("delivered event after the restart lacks require_tls: %+v", ev)
		}
		if !sawREQUIRETLS(later, "g@later.test") {
			t.Fatal("REQUIRETLS lost over the restart")
		}
	})
}
