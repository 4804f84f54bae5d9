package main

// End-to-end test of the suppression list against the real binary: a
// 550 5.1.1 from the next hop suppresses the address for the sender's
// tenant; HTTP then reports it "suppressed" and SMTP refuses it at RCPT;
// removal (API and CLI) lets it through again.

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/pipeline"
)

const suppressionConfig = `
local sluice = require("sluice")
sluice.node { name = "supp-e2e-1", hostname = "relay.e2e.test" }
sluice.spool { path = "{{SPOOL}}" }
sluice.events { file = "{{EVENTS}}" }
sluice.listen_smtp { addr = "{{SMTP}}", relay_networks = { "127.0.0.0/8" } }
sluice.listen_http { addr = "{{HTTP}}" }
sluice.delivery {
  resolver = "{{DNS}}",
  port = {{MXPORT}},
  retry = { initial = "200ms", max = "200ms", jitter = 0 },
  queue_lifetime = "1h",
  idle_timeout = "1s",
}
sluice.suppression { enabled = true, classes = { "InvalidRecipient", "BadDomain" } }
sluice.stage("routing", {
  on_route = function(msg, rcpt)
    if rcpt.domain == "smart.test" then
      return sluice.route.relay { host = "127.0.0.1", port = {{SMARTPORT}}, tls = "none" }
    end
    return sluice.route.mx()
  end,
})
`

func newSuppressionEnv(t *testing.T) *httpEnv {
	t.Helper()
	h := &httpEnv{t: t, dns: dnstest.NewServer(t), mx: newSink(t), smart: newSink(t)}
	h.dns.AddMX("sender.test", 10, "mx1.sender.test")
	h.dns.AddA("mx1.sender.test", "127.0.0.1")
	httpAddr := freePort(t)
	cfg := strings.NewReplacer("{{HTTP}}", httpAddr, "{{DNS}}", h.dns.Addr(), "{{MXPORT}}", h.mx.port(),
		"{{SMARTPORT}}", h.smart.port()).Replace(suppressionConfig)
	h.relay = newRelay(t, t.TempDir(), cfg)
	h.base = "http://" + httpAddr
	h.client = &http.Client{Timeout: 30 * time.Second}
	t.Cleanup(h.client.CloseIdleConnections)
	return h
}

// suppCLI runs `sluice suppression ARGS` against the relay's API.
func (h *httpEnv) suppCLI(key string, args ...string) (stdout, stderr string, code int) {
	h.t.Helper()
	return h.apiCLI(key, "suppression", args...)
}

// apiCLI runs `sluice COMMAND ARGS` with SLUICE_URL and SLUICE_API_KEY
// set for the relay's API.
func (h *httpEnv) apiCLI(key, command string, args ...string) (stdout, stderr string, code int) {
	h.t.Helper()
	cmd := exec.Command(binPath, append([]string{command}, args...)...)
	cmd.Env = append(cmd.Environ(), "SLUICE_URL="+h.base, "SLUICE_API_KEY="+key)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		h.t.Fatal(err)
	}
	return o.String(), e.String(), code
}

func (h *httpEnv) postMessage(key string, to ...string) httpPostAnswer {
	h.t.Helper()
	body, _ := json.Marshal(map[string]any{"from": "app@sender.test", "to": to, "subject": "hello", "text": "hi"})
	r := h.do("POST", "/v1/messages", key, body, nil)
	var a httpPostAnswer
	if r.status != http.StatusAccepted && r.status != http.StatusUnprocessableEntity {
		h.t.Fatalf("POST /v1/messages: %s", r)
	}
	if err := json.Unmarshal(r.body, &a); err != nil {
		h.t.Fatalf("POST /v1/messages: %s: %v", r, err)
	}
	if r.status == http.StatusUnprocessableEntity {
		var eb struct {
			Recipients []struct {
				Email, Status string
			} `json:"recipients"`
		}
		_ = json.Unmarshal(r.body, &eb)
		for _, x := range eb.Recipients {
			a.Recipients = append(a.Recipients, struct {
				Email    string `json:"email"`
				Status   string `json:"status"`
				Code     int    `json:"code"`
				Enhanced string `json:"enhanced"`
				Message  string `json:"message"`
			}{Email: x.Email, Status: x.Status})
		}
	}
	return a
}

func statusOf(a httpPostAnswer, email string) string {
	for _, r := range a.Recipients {
		if r.Email == email {
			return r.Status
		}
	}
	return ""
}

func tenantEvent(evs []pipeline.Event, typ, rcpt, tenant string) *pipeline.Event {
	for i := range evs {
		if e := &evs[i]; e.Type == typ && e.Recipient == rcpt && e.Tenant == tenant {
			return e
		}
	}
	return nil
}

func tenantEvents(evs []pipeline.Event, typ, rcpt, tenant string) int {
	n := 0
	for _, e := range evs {
		if e.Type == typ && e.Recipient == rcpt && e.Tenant == tenant {
			n++
		}
	}
	return n
}

func TestSuppressionEndToEnd(t *testing.T) {
	h := newSuppressionEnv(t)
	const gone = "gone@smart.test"
	h.smart.rcptReply = func(rcpt string) error {
		if rcpt == gone {
			return smtpErr(550, [3]int{5, 1, 1}, "No such user here")
		}
		return nil
	}
	h.start()
	key, _ := h.createKey("acme")
	admin, _ := h.createKey("acme", "admin")

	// 1. A hard bounce (550 5.1.1) suppresses the address for acme.
	a := h.postMessage(key, gone)
	if statusOf(a, gone) != "queued" {
		t.Fatalf("first message: %+v; want queued", a.Recipients)
	}
	evs := h.relay.waitEvents("the bounce suppresses the address", func(evs []pipeline.Event) bool {
		return tenantEvent(evs, pipeline.EventSuppressionAdded, gone, "acme") != nil
	})
	bounced := tenantEvent(evs, pipeline.EventBounced, gone, "acme")
	added := tenantEvent(evs, pipeline.EventSuppressionAdded, gone, "acme")
	if bounced == nil || bounced.MessageID != a.ID {
		t.Fatalf("no bounced event for %s of %s:\n%s", gone, a.ID, describeEvents(evs))
	}
	if added.MessageID != a.ID || added.Source != "bounce" || added.BounceClass != "InvalidRecipient" || added.Metadata["event_id"] != bounced.EventID {
		t.Errorf("suppression_added %+v; want message %s, source bounce, class InvalidRecipient, event_id %s", added, a.ID, bounced.EventID)
	}
	r := h.do("GET", "/v1/suppressions/"+url.PathEscape(gone), key, nil, nil)
	var ent struct {
		Address, Source, Class, Reason, EventID, MessageID string
	}
	if r.status != 200 {
		t.Fatalf("GET suppression: %s", r)
	}
	_ = json.Unmarshal(r.body, &ent)
	var entJSON struct {
		EventID   string `json:"event_id"`
		MessageID string `json:"message_id"`
	}
	_ = json.Unmarshal(r.body, &entJSON)
	if ent.Source != "bounce" || ent.Class != "InvalidRecipient" || !strings.Contains(ent.Reason, "550 5.1.1") ||
		entJSON.EventID != bounced.EventID || entJSON.MessageID != a.ID {
		t.Errorf("entry %s; want source bounce, class InvalidRecipient, reason 550 5.1.1, event %s, message %s", r.body, bounced.EventID, a.ID)
	}

	// 2. HTTP: the suppressed recipient is reported, not queued; the
	// other is delivered.
	before := h.smart.count()
	a = h.postMessage(key, gone, "ok@smart.test")
	if statusOf(a, gone) != "suppressed" || statusOf(a, "ok@smart.test") != "queued" {
		t.Fatalf("second message: %+v; want gone suppressed, ok queued", a.Recipients)
	}
	evs = h.relay.waitEvents("ok@smart.test delivered", func(evs []pipeline.Event) bool {
		return countType(evs, pipeline.EventDelivered, "ok@smart.test") == 1
	})
	if sup := tenantEvent(evs, pipeline.EventSuppressed, gone, "acme"); sup == nil || sup.MessageID != a.ID || sup.Response == nil || sup.Response.Code != 550 {
		t.Errorf("suppressed event %+v; want one for %s of %s with 550", sup, gone, a.ID)
	}
	if n := countType(evs, pipeline.EventRejected, gone); n != 0 {
		t.Errorf("%d rejected events for %s; a suppression is recorded as suppressed", n, gone)
	}
	for _, m := range h.smart.messages()[before:] {
		for _, rc := range m.Rcpts {
			if rc == gone {
				t.Errorf("the suppressed address reached the next hop")
			}
		}
	}

	// 3. SMTP (tenant ""): acme's entry does not apply; its own bounce
	// suppresses it for "", then RCPT gets the 5xx.
	if err := sendMail(h.relay.smtp, "app@sender.test", []string{gone}, "Subject: x\r\n\r\nbody\r\n"); err != nil {
		t.Fatalf("SMTP to an address suppressed for another tenant: %v", err)
	}
	h.relay.waitEvents("the SMTP bounce suppresses the address for tenant \"\"", func(evs []pipeline.Event) bool {
		return tenantEvent(evs, pipeline.EventSuppressionAdded, gone, "") != nil
	})
	s := dialRaw(t, h.relay.smtp)
	s.cmd("EHLO client.test")
	if rep := s.cmd("MAIL FROM:<app@sender.test>"); !strings.HasPrefix(rep, "250") {
		t.Fatalf("MAIL: %s", rep)
	}
	rep := s.cmd("RCPT TO:<" + gone + ">")
	if !strings.HasPrefix(rep, "550 5.7.1 <"+gone+">: recipient is on the suppression list of this relay (hard bounce InvalidRecipient on ") ||
		!strings.HasSuffix(rep, "remove it to send again") {
		t.Errorf("RCPT of a suppressed address: %q; want 550 5.7.1 naming the list", rep)
	}
	if rep := s.cmd("RCPT TO:<ok@smart.test>"); !strings.HasPrefix(rep, "250") {
		t.Errorf("RCPT of another address: %s", rep)
	}
	s.cmd("QUIT")
	// A DSN (null sender) is never refused.
	s = dialRaw(t, h.relay.smtp)
	s.cmd("EHLO client.test")
	s.cmd("MAIL FROM:<>")
	if rep := s.cmd("RCPT TO:<" + gone + ">"); !strings.HasPrefix(rep, "250") {
		t.Errorf("RCPT of a suppressed address from <>: %s; want 250", rep)
	}
	s.cmd("QUIT")

	// 4. The CLI lists, adds and removes.
	out, errOut, code := h.suppCLI(key, "list")
	if code != 0 || !strings.Contains(out, gone) || !strings.Contains(out, "InvalidRecipient") || !strings.Contains(out, "bounce") {
		t.Errorf("suppression list: exit %d\n%s%s", code, out, errOut)
	}
	if _, errOut, code := h.suppCLI(key, "add", "later@smart.test", "--reason", "asked to stop"); code != 0 {
		t.Fatalf("suppression add: exit %d: %s", code, errOut)
	}
	if a := h.postMessage(key, "later@smart.test"); statusOf(a, "later@smart.test") != "suppressed" {
		t.Errorf("after CLI add: %+v; want suppressed", a.Recipients)
	}
	out, _, _ = h.suppCLI(key, "list", "--json")
	if !strings.Contains(out, `"later@smart.test"`) || !strings.Contains(out, `"asked to stop"`) || !strings.Contains(out, `"cli"`) {
		t.Errorf("list --json after add:\n%s", out)
	}
	if _, errOut, code := h.suppCLI(key, "remove", "later@smart.test"); code != 0 {
		t.Fatalf("suppression remove: exit %d: %s", code, errOut)
	}
	if out, _, _ := h.suppCLI(key, "list"); strings.Contains(out, "later@smart.test") {
		t.Errorf("list after remove still shows it:\n%s", out)
	}
	if _, errOut, code := h.suppCLI(key, "remove", "later@smart.test"); code != 1 || !strings.Contains(errOut, "404") || !strings.Contains(errOut, "not on the suppression list") {
		t.Errorf("removing an absent address: exit %d, %q; want 1 and a 404", code, errOut)
	}
	if _, errOut, code := h.suppCLI(key, "add", "not-an-address"); code != 1 || !strings.Contains(errOut, "field address") {
		t.Errorf("adding a bad address: exit %d, %q; want 1 naming the field", code, errOut)
	}
	if _, errOut, code := h.suppCLI(key, "add"); code != 2 || !strings.Contains(errOut, "ADDRESS") {
		t.Errorf("add without an address: exit %d, %q; want 2", code, errOut)
	}
	if out, _, code := h.suppCLI("", "--help"); code != 0 || !strings.Contains(out, "sluice suppression list") {
		t.Errorf("--help: exit %d\n%s", code, out)
	}

	// 5. Removal via the API lets it through: delivered.
	h.smart.mu.Lock()
	h.smart.rcptReply = nil // the mailbox exists again
	h.smart.mu.Unlock()
	if r := h.do("DELETE", "/v1/suppressions/"+url.PathEscape(gone), key, nil, nil); r.status != 200 {
		t.Fatalf("DELETE: %s", r)
	}
	a = h.postMessage(key, gone)
	if statusOf(a, gone) != "queued" {
		t.Fatalf("after removal: %+v; want queued", a.Recipients)
	}
	h.relay.waitEvents("delivery after removal", func(evs []pipeline.Event) bool {
		return tenantEvents(evs, pipeline.EventDelivered, gone, "acme") == 1
	})
	// And for tenant "", through the CLI with an admin key.
	if _, errOut, code := h.suppCLI(admin, "remove", gone, "--tenant", ""); code != 0 {
		t.Fatalf("suppression remove --tenant \"\": exit %d: %s", code, errOut)
	}
	if err := sendMail(h.relay.smtp, "app@sender.test", []string{gone}, "Subject: x\r\n\r\nbody\r\n"); err != nil {
		t.Fatalf("SMTP after removal: %v", err)
	}
	evs = h.relay.waitEvents("SMTP delivery after removal", func(evs []pipeline.Event) bool {
		return tenantEvents(evs, pipeline.EventDelivered, gone, "") == 1
	})
	if n := tenantEvents(evs, pipeline.EventSuppressionRemoved, gone, "acme") + tenantEvents(evs, pipeline.EventSuppressionRemoved, gone, ""); n != 2 {
		t.Errorf("%d suppression_removed events for %s; want 2:\n%s", n, gone, describeEvents(evs))
	}
	if rm := tenantEvent(evs, pipeline.EventSuppressionRemoved, gone, ""); rm == nil || rm.Source != "cli" {
		t.Errorf("suppression_removed for tenant \"\": %+v; want source cli", rm)
	}
}

// A reload applies sluice.suppression: with enabled = false the list is
// kept but no longer enforced.
func TestSuppressionReload(t *testing.T) {
	h := newSuppressionEnv(t)
	h.start()
	admin, _ := h.createKey("ops", "admin")
	body, _ := json.Marshal(map[string]string{"address": "held@smart.test", "reason": "test"})
	if r := h.do("POST", "/v1/suppressions?tenant=", admin, body, nil); r.status != http.StatusCreated {
		t.Fatalf("POST: %s", r)
	}
	rcpt := func() string {
		s := dialRaw(t, h.relay.smtp)
		defer s.cmd("QUIT")
		s.cmd("EHLO client.test")
		s.cmd("MAIL FROM:<app@sender.test>")
		return s.cmd("RCPT TO:<held@smart.test>")
	}
	if rep := rcpt(); !strings.HasPrefix(rep, "550 5.7.1 <held@smart.test>: recipient is on the suppression list of this relay (added by api on ") {
		t.Fatalf("RCPT before the reload: %q", rep)
	}
	cfg, err := os.ReadFile(h.relay.cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg = bytes.Replace(cfg, []byte("sluice.suppression { enabled = true,"), []byte("sluice.suppression { enabled = false,"), 1)
	if err := os.WriteFile(h.relay.cfg, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := h.relay.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	var rep string
	waitFor(t, "RCPT accepted after the reload", func() bool {
		rep = rcpt()
		return strings.HasPrefix(rep, "250")
	})
	// The list itself is kept.
	if r := h.do("GET", "/v1/suppressions/held@smart.test?tenant=", admin, nil, nil); r.status != http.StatusOK {
		t.Errorf("GET after the reload: %s; want the entry kept", r)
	}
}
