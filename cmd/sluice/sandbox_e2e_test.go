package main

// End-to-end tests of the sandbox (issue 23) against the real binary:
// sandbox tenants whose mail passes every stage (DKIM signing included)
// and is captured instead of delivered, the tenant-scoped inbox API, wait
// and its 408, assertions, simulated recipients whose bounces become real
// events, suppression entries and webhooks, retention with its event, and
// a sandbox SMTP listener.

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"

	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/pipeline"
)

const sandboxConfig = `
local sluice = require("sluice")
sluice.node { name = "sandbox-e2e", hostname = "relay.e2e.test" }
sluice.spool { path = "{{SPOOL}}" }
sluice.events { file = "{{EVENTS}}", webhooks = {
  { name = "bounces", url = "{{HOOK}}", secret = "` + webhookSecret + `", types = { "bounced" } },
} }
sluice.listen_smtp { addr = "{{SMTP}}" }
sluice.listen_smtp { addr = "{{SBSMTP}}", relay_networks = { "127.0.0.1/32" }, sandbox = "smtpbox" }
sluice.listen_http { addr = "{{HTTP}}" }
sluice.delivery {
  resolver = "{{DNS}}",
  port = {{MXPORT}},
  retry = { initial = "200ms", max = "200ms", jitter = 0 },
  queue_lifetime = "1h",
  idle_timeout = "1s",
}
sluice.sandbox {
  tenants = { "acme", "beta", "waiter", "signer", "bouncer", "keeper" },
  retention = { messages = 5 },
  links_allow = { "{{LINKHOST}}" },
  simulate = {
    { match = "bounce@sim.test", reply = "550 5.1.1 No such user" },
    { match = "flaky@sim.test", reply = "452 4.2.2 Mailbox full", times = 2 },
    { match = "complain@sim.test", complaint = true },
    { match = "ooo@sim.test", auto_reply = "I am away until Monday." },
  },
}
sluice.stage("dkim", sluice.builtin.dkim_sign {
  keys = { { domain = "sender.test", selector = "s1", key = "keys/sender.test.s1.pem" } },
})
`

type sandboxEnv struct {
	*httpEnv
	sbSMTP string
	hook   *hookReceiver
	links  *httptest.Server
}

func newSandboxEnv(t *testing.T) *sandboxEnv {
	t.Helper()
	h := &httpEnv{t: t, dns: dnstest.NewServer(t), mx: newSink(t), smart: newSink(t)}
	h.dns.AddMX("sender.test", 10, "mx1.sender.test")
	h.dns.AddMX("dest.test", 10, "mx1.sender.test")
	h.dns.AddA("mx1.sender.test", "127.0.0.1")
	dir := t.TempDir()
	name, value := keygen(t, filepath.Join(dir, "keys"), "sender.test", "s1", "rsa")
	var chunks []string // one TXT string holds at most 255 bytes
	for len(value) > 255 {
		chunks, value = append(chunks, value[:255]), value[255:]
	}
	h.dns.AddTXT(name, append(chunks, value)...)
	e := &sandboxEnv{httpEnv: h, hook: &hookReceiver{}, sbSMTP: freePort(t)}
	e.links = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/dead" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	t.Cleanup(e.links.Close)
	lu, _ := url.Parse(e.links.URL)
	httpAddr := freePort(t)
	cfg := strings.NewReplacer(
		"{{HTTP}}", httpAddr,
		"{{DNS}}", h.dns.Addr(),
		"{{MXPORT}}", h.mx.port(),
		"{{SBSMTP}}", e.sbSMTP,
		"{{HOOK}}", startReceiver(t, e.hook),
		"{{LINKHOST}}", lu.Host,
	).Replace(sandboxConfig)
	h.relay = newRelay(t, dir, cfg)
	h.base = "http://" + httpAddr
	h.client = &http.Client{Timeout: 60 * time.Second}
	h.start()
	return e
}

// send posts a composed message with key and wants 202.
func (e *sandboxEnv) send(key string, body map[string]any) string {
	e.t.Helper()
	b, _ := json.Marshal(body)
	r := e.do("POST", "/v1/messages", key, b, nil)
	if r.status != http.StatusAccepted {
		e.t.Fatalf("POST /v1/messages: %s", r)
	}
	var a struct{ ID string }
	_ = json.Unmarshal(r.body, &a)
	return a.ID
}

type sbSummary struct {
	ID          string   `json:"id"`
	Tenant      string   `json:"tenant"`
	MessageID   string   `json:"message_id"`
	Subject     string   `json:"subject"`
	To          []string `json:"to"`
	Recipients  []string `json:"recipients"`
	Attachments int      `json:"attachment_count"`
}

type sbPage struct {
	Total    int         `json:"total"`
	Messages []sbSummary `json:"messages"`
}

func (e *sandboxEnv) list(key, query string) sbPage {
	e.t.Helper()
	r := e.do("GET", "/v1/sandbox/messages?"+query, key, nil, nil)
	if r.status != 200 {
		e.t.Fatalf("list: %s", r)
	}
	var p sbPage
	if err := json.Unmarshal(r.body, &p); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// wait long-polls for a message matching query.
func (e *sandboxEnv) wait(key, query string) sbSummary {
	e.t.Helper()
	r := e.do("GET", "/v1/sandbox/wait?timeout=30s&"+query, key, nil, nil)
	if r.status != 200 {
		e.t.Fatalf("wait %s: %s", query, r)
	}
	var s sbSummary
	_ = json.Unmarshal(r.body, &s)
	return s
}

func (e *sandboxEnv) assert(key, id string, checks string) (bool, []map[string]any) {
	e.t.Helper()
	r := e.do("POST", "/v1/sandbox/messages/"+id+"/assert", key, []byte(`{"checks":`+checks+`}`), nil)
	if r.status != 200 {
		e.t.Fatalf("assert: %s", r)
	}
	var a struct {
		Passed  bool             `json:"passed"`
		Results []map[string]any `json:"results"`
	}
	_ = json.Unmarshal(r.body, &a)
	return a.Passed, a.Results
}

func TestSandboxEndToEnd(t *testing.T) {
	e := newSandboxEnv(t)
	acme := e.createLiveKey("acme")
	beta := e.createLiveKey("beta")
	admin := e.createLiveKey("ops", "admin")

	t.Run("tenants see only their own mail", func(t *testing.T) {
		e.send(acme, map[string]any{"from": "app@sender.test", "to": "shared@dest.test", "subject": "for acme", "text": "hello acme"})
		e.send(beta, map[string]any{"from": "app@sender.test", "to": "shared@dest.test", "subject": "for beta", "text": "hello beta"})
		a := e.wait(acme, "to=shared@dest.test")
		b := e.wait(beta, "to=shared@dest.test")
		if a.Subject != "for acme" || b.Subject != "for beta" || a.Tenant != "acme" || b.Tenant != "beta" {
			t.Fatalf("acme got %+v, beta got %+v", a, b)
		}
		if p := e.list(acme, "to=shared@dest.test"); p.Total != 1 || p.Messages[0].ID != a.ID {
			t.Fatalf("acme's list: %+v", p)
		}
		for _, path := range []string{"", "/raw", "/events"} {
			if r := e.do("GET", "/v1/sandbox/messages/"+b.ID+path, acme, nil, nil); r.status != 404 {
				t.Errorf("acme reading beta's message%s: %s", path, r)
			}
		}
		if r := e.do("DELETE", "/v1/sandbox/messages/"+b.ID, acme, nil, nil); r.status != 404 {
			t.Errorf("acme deleting beta's message: %s", r)
		}
		if r := e.do("GET", "/v1/sandbox/messages?tenant=beta", acme, nil, nil); r.status != 403 {
			t.Errorf("a send key naming another tenant: %s", r)
		}
		if p := e.list(admin, "tenant=beta&to=shared@dest.test"); p.Total != 1 || p.Messages[0].ID != b.ID {
			t.Errorf("an admin key naming beta: %+v", p)
		}
		// The message passed the pipeline: DKIM signed, events recorded.
		raw := e.do("GET", "/v1/sandbox/messages/"+a.ID+"/raw", acme, nil, nil)
		if raw.status != 200 || !bytes.Contains(raw.body, []byte("DKIM-Signature:")) || !bytes.Contains(raw.body, []byte("hello acme")) {
			t.Fatalf("raw: %s", raw)
		}
		evr := e.do("GET", "/v1/sandbox/messages/"+a.ID+"/events", acme, nil, nil)
		var evs struct{ Events []pipeline.Event }
		_ = json.Unmarshal(evr.body, &evs)
		if countType(evs.Events, pipeline.EventReceived, "shared@dest.test") != 1 || countType(evs.Events, pipeline.EventDelivered, "shared@dest.test") != 1 {
			t.Fatalf("timeline: %s", evr)
		}
		for _, ev := range evs.Events {
			if ev.Type == pipeline.EventDelivered && (ev.Queue != "sandbox:acme" || ev.Remote == nil || ev.Remote.Host != "sandbox") {
				t.Errorf("delivered event: %+v", ev)
			}
		}
	})

	t.Run("wait", func(t *testing.T) {
		waiter := e.createLiveKey("waiter")
		got := make(chan httpResp, 1)
		wrote := make(chan struct{})
		go func() {
			req, _ := http.NewRequest("GET", e.base+"/v1/sandbox/wait?to=late@dest.test&subject=Later&timeout=30s", nil)
			req.Header.Set("Authorization", "Bearer "+waiter)
			req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { close(wrote) }}))
			resp, err := e.client.Do(req)
			if err != nil {
				got <- httpResp{status: -1, body: []byte(err.Error())}
				return
			}
			defer resp.Body.Close()
			var b bytes.Buffer
			_, _ = b.ReadFrom(resp.Body)
			got <- httpResp{status: resp.StatusCode, body: b.Bytes()}
		}()
		<-wrote
		id := e.send(waiter, map[string]any{"from": "app@sender.test", "to": "late@dest.test", "subject": "later news", "text": "x"})
		r := <-got
		var s sbSummary
		_ = json.Unmarshal(r.body, &s)
		if r.status != 200 || s.MessageID != id || s.Subject != "later news" {
			t.Fatalf("wait answered %s; want the message %s", r, id)
		}
		r = e.do("GET", "/v1/sandbox/wait?to=nobody@dest.test&timeout=1s", waiter, nil, nil)
		if r.status != http.StatusRequestTimeout || r.apiError().Error.Code != "wait_timeout" {
			t.Fatalf("wait for nothing: %s", r)
		}
		if r := e.do("GET", "/v1/sandbox/wait?timeout=forever", waiter, nil, nil); r.status != 400 || r.apiError().Error.Field != "timeout" {
			t.Fatalf("bad timeout: %s", r)
		}
	})

	t.Run("assertions", func(t *testing.T) {
		signer := e.createLiveKey("signer")
		good := e.links.URL + "/ok"
		e.send(signer, map[string]any{"from": "app@sender.test", "to": "check@dest.test", "subject": "signed",
			"text": "visit " + good, "html": `<p><a href="` + good + `">go</a></p>`,
			"attachments": []map[string]string{{"filename": "a.txt", "content_type": "text/plain", "content": base64.StdEncoding.EncodeToString([]byte("attached"))}}})
		s := e.wait(signer, "subject=signed")
		ok, res := e.assert(signer, s.ID, `[{"type":"dkim"},{"type":"dmarc"},{"type":"links"},{"type":"parts","text":true,"html":true},
			{"type":"header","name":"DKIM-Signature"},{"type":"header","name":"X-Missing","present":false},
			{"type":"attachment","filename":"a.txt","sha256":"`+sha256hex("attached")+`"}]`)
		if !ok {
			t.Fatalf("a correctly signed message failed: %v", res)
		}

		e.send(signer, map[string]any{"from": "app@sender.test", "to": "check@dest.test", "subject": "dead link",
			"html": `<a href="` + e.links.URL + `/dead">x</a>`})
		s = e.wait(signer, "subject=dead+link")
		ok, res = e.assert(signer, s.ID, `[{"type":"dkim"},{"type":"links"}]`)
		if ok || res[0]["passed"] != true || res[1]["passed"] != false || !strings.Contains(fmt.Sprint(res[1]["reason"]), "404") {
			t.Fatalf("dead link: %v", res)
		}

		// A message signed by its author and altered afterwards.
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		e.dns.AddTXT("a1._domainkey.author.test", "v=DKIM1; k=ed25519; p="+base64.StdEncoding.EncodeToString(pub))
		msg := "From: app@author.test\r\nTo: check@dest.test\r\nSubject: altered\r\nMessage-ID: <alt@author.test>\r\n\r\noriginal body\r\n"
		var signed bytes.Buffer
		if err := msgauth.Sign(&signed, strings.NewReader(msg), &msgauth.SignOptions{Domain: "author.test", Selector: "a1", Signer: priv}); err != nil {
			t.Fatal(err)
		}
		altered := strings.Replace(signed.String(), "original body", "altered body", 1)
		rb, _ := json.Marshal(map[string]any{"from": "app@author.test", "to": []string{"check@dest.test"}, "message": altered})
		if r := e.do("POST", "/v1/messages/raw", signer, rb, nil); r.status != 202 {
			t.Fatalf("raw send: %s", r)
		}
		s = e.wait(signer, "subject=altered")
		ok, res = e.assert(signer, s.ID, `[{"type":"dkim"}]`)
		if ok || !strings.Contains(fmt.Sprint(res[0]["reason"]), "author.test") {
			t.Fatalf("altered message: %v", res)
		}
		if r := e.do("POST", "/v1/sandbox/messages/"+s.ID+"/assert", signer, []byte(`{"checks":[{"type":"nope"}]}`), nil); r.status != 400 || r.apiError().Error.Field != "checks[0].type" {
			t.Fatalf("unknown check: %s", r)
		}
	})

	t.Run("simulated recipients", func(t *testing.T) {
		bouncer := e.createLiveKey("bouncer")
		id := e.send(bouncer, map[string]any{"from": "app@sender.test", "to": "bounce@sim.test", "subject": "to bounce", "text": "x"})
		evs := e.relay.waitEvents("the simulated bounce", func(evs []pipeline.Event) bool {
			return countType(evs, pipeline.EventBounced, "bounce@sim.test") == 1
		})
		for _, ev := range evs {
			if ev.Type == pipeline.EventBounced && (ev.MessageID != id || ev.BounceClass != "InvalidRecipient" || ev.Tenant != "bouncer" || ev.Response.Code != 550) {
				t.Fatalf("bounced event: %+v", ev)
			}
		}
		if r := e.do("GET", "/v1/suppressions/bounce@sim.test", bouncer, nil, nil); r.status != 200 || !strings.Contains(string(r.body), "InvalidRecipient") {
			t.Fatalf("suppression entry: %s", r)
		}
		waitFor(t, "the webhook's bounce", func() bool {
			for _, ev := range e.hook.events() {
				if ev.Type == pipeline.EventBounced && ev.MessageID == id {
					return true
				}
			}
			return false
		})
		// The DSN to the sender is captured too: nothing leaves.
		dsn := e.wait(bouncer, "to=app@sender.test")
		if dsn.MessageID == id {
			t.Fatalf("the DSN is the message itself: %+v", dsn)
		}
		// A second message to the suppressed address is refused.
		b, _ := json.Marshal(map[string]any{"from": "app@sender.test", "to": "bounce@sim.test", "subject": "again", "text": "x"})
		if r := e.do("POST", "/v1/messages", bouncer, b, nil); r.status == 202 && !strings.Contains(string(r.body), "suppressed") {
			t.Fatalf("send to a suppressed address: %s", r)
		}

		id = e.send(bouncer, map[string]any{"from": "app@sender.test", "to": "flaky@sim.test", "subject": "third time", "text": "x"})
		s := e.wait(bouncer, "to=flaky@sim.test")
		if s.MessageID != id {
			t.Fatalf("flaky: %+v", s)
		}
		evs = e.relay.readEvents()
		if n := countType(evs, pipeline.EventDeferred, "flaky@sim.test"); n != 2 {
			t.Fatalf("%d deferred events for flaky, want 2:\n%s", n, describeEvents(evs))
		}
	})

	t.Run("simulated complaint and out-of-office", func(t *testing.T) {
		bouncer := e.createLiveKey("bouncer")
		id := e.send(bouncer, map[string]any{"from": "app@sender.test", "to": "complain@sim.test", "subject": "spammy", "text": "x"})
		evs := e.relay.waitEvents("the complaint", func(evs []pipeline.Event) bool {
			return countType(evs, pipeline.EventComplained, "complain@sim.test") == 1
		})
		complained := ""
		for _, ev := range evs {
			if ev.Type == pipeline.EventComplained && ev.Recipient == "complain@sim.test" {
				if ev.MessageID != id || ev.Tenant != "bouncer" {
					t.Fatalf("complained event: %+v", ev)
				}
				complained = ev.EventID
			}
		}
		// The entry names the event that caused it, as a bounce's does
		// (docs/http-api.md: event_id).
		if r := e.do("GET", "/v1/suppressions/complain@sim.test", bouncer, nil, nil); r.status != 200 || !strings.Contains(string(r.body), `"source":"complaint"`) ||
			complained == "" || !strings.Contains(string(r.body), `"event_id":"`+complained+`"`) {
			t.Fatalf("suppression entry (want event_id %q): %s", complained, r)
		}
		e.send(bouncer, map[string]any{"from": "app@sender.test", "to": "ooo@sim.test", "subject": "meeting", "text": "x"})
		ar := e.wait(bouncer, "to=app@sender.test&subject=Automatic+reply:+meeting")
		r := e.do("GET", "/v1/sandbox/messages/"+ar.ID, bouncer, nil, nil)
		if !strings.Contains(string(r.body), "I am away until Monday.") || !strings.Contains(string(r.body), "auto-replied") {
			t.Fatalf("auto-reply: %s", r)
		}
	})

	t.Run("retention", func(t *testing.T) {
		keeper := e.createLiveKey("keeper")
		for i := 1; i <= 7; i++ {
			e.send(keeper, map[string]any{"from": "app@sender.test", "to": "keep@dest.test", "subject": fmt.Sprintf("k%d", i), "text": "x"})
			e.wait(keeper, fmt.Sprintf("subject=k%d", i))
		}
		evs := e.relay.waitEvents("two sandbox_dropped events", func(evs []pipeline.Event) bool {
			n := 0
			for _, ev := range evs {
				if ev.Type == pipeline.EventSandboxDropped && ev.Tenant == "keeper" {
					n++
				}
			}
			return n == 2
		})
		_ = evs
		p := e.list(keeper, "")
		if p.Total != 5 {
			t.Fatalf("keeper has %d messages, want 5", p.Total)
		}
		for _, m := range p.Messages {
			if m.Subject == "k1" || m.Subject == "k2" {
				t.Fatalf("the oldest were kept: %+v", p.Messages)
			}
		}
		if r := e.do("DELETE", "/v1/sandbox/messages", keeper, nil, nil); r.status != 200 || !strings.Contains(string(r.body), `"deleted":5`) {
			t.Fatalf("delete all: %s", r)
		}
		if p := e.list(keeper, ""); p.Total != 0 {
			t.Fatalf("after delete all: %+v", p)
		}
	})

	t.Run("sandbox SMTP listener", func(t *testing.T) {
		if err := sendMail(e.sbSMTP, "app@sender.test", []string{"smtp@dest.test"}, "From: app@sender.test\r\nTo: smtp@dest.test\r\nSubject: over smtp\r\n\r\nbody\r\n"); err != nil {
			t.Fatal(err)
		}
		s := e.wait(admin, "tenant=smtpbox&subject=over+smtp")
		if s.Tenant != "smtpbox" {
			t.Fatalf("%+v", s)
		}
	})

	if n := e.mx.count(); n != 0 {
		t.Fatalf("%d messages left the machine", n)
	}
}

func sha256hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
