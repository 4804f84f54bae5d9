package main

// End-to-end tests of the HTTP submission API against the real binary:
// API keys made with `sluice apikey`, JSON POSTs over real sockets, the Lua
// pipeline, delivery to a go-smtp sink, the JSONL events file, kill -9 and
// restarts.

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-message/mail"

	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// httpConfig: an SMTP listener (the harness waits for it), an HTTP
// listener, a Lua stage that stamps the tenant, tags the message and
// refuses blocked@smart.test, and routing of smart.test to the smarthost.
const httpConfig = `
local sluice = require("sluice")
sluice.node { name = "http-e2e-1", hostname = "relay.e2e.test" }
sluice.local_domains { "local.test" }
sluice.spool { path = "{{SPOOL}}" }
sluice.events { file = "{{EVENTS}}" }
sluice.listen_smtp { addr = "{{SMTP}}" }
sluice.listen_http { addr = "{{HTTP}}" }
sluice.delivery {
  resolver = "{{DNS}}",
  port = {{MXPORT}},
  retry = { initial = "200ms", max = "200ms", jitter = 0 },
  queue_lifetime = "1h",
  idle_timeout = "1s",
}
sluice.lua_options { timeout = "2s" }
sluice.stage("tenant", {
  on_rcpt = function(txn, rcpt)
    if rcpt.address == "blocked@smart.test" then
      return sluice.reject(550, "5.1.1", "blocked")
    end
  end,
  on_message = function(msg)
    msg:add_header("X-Tenant", msg.conn.tenant or "none")
    msg:tag("lua-stage")
  end,
})
sluice.stage("routing", {
  on_route = function(msg, rcpt)
    if rcpt.domain == "smart.test" then
      return sluice.route.relay { host = "127.0.0.1", port = {{SMARTPORT}}, tls = "none" }
    end
    return sluice.route.mx()
  end,
})
`

type httpEnv struct {
	t      *testing.T
	dns    *dnstest.Server
	mx     *sink // MX of sender.test: would receive bounces
	smart  *sink // the smarthost
	relay  *relayProc
	base   string // http://127.0.0.1:PORT
	client *http.Client
}

func newHTTPEnv(t *testing.T) *httpEnv {
	t.Helper()
	h := &httpEnv{t: t, dns: dnstest.NewServer(t), mx: newSink(t), smart: newSink(t)}
	h.dns.AddMX("sender.test", 10, "mx1.sender.test")
	h.dns.AddA("mx1.sender.test", "127.0.0.1")
	httpAddr := freePort(t)
	cfg := strings.NewReplacer(
		"{{HTTP}}", httpAddr,
		"{{DNS}}", h.dns.Addr(),
		"{{MXPORT}}", h.mx.port(),
		"{{SMARTPORT}}", h.smart.port(),
	).Replace(httpConfig)
	h.relay = newRelay(t, t.TempDir(), cfg)
	h.base = "http://" + httpAddr
	h.client = &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{MaxIdleConns: 64, MaxIdleConnsPerHost: 64, IdleConnTimeout: 30 * time.Second},
	}
	t.Cleanup(h.client.CloseIdleConnections)
	return h
}

// start starts the relay and waits until the HTTP listener answers
// /healthz (the harness only waits for the SMTP listener).
func (h *httpEnv) start() {
	h.t.Helper()
	h.relay.start()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := h.client.Get(h.base + "/healthz")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && string(b) == "ok" {
				return
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("the HTTP listener %s did not answer /healthz: %v; logs:\n%s", h.base, err, h.relay.logText())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// apikeyBin runs `sluice apikey ARGS -c CONFIG` with the real binary.
func (h *httpEnv) apikeyBin(args ...string) (stdout, stderr string, err error) {
	h.t.Helper()
	cmd := exec.Command(binPath, append(append([]string{"apikey"}, args...), "-c", h.relay.cfg)...)
	cmd.Dir = h.relay.dir
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// createKey makes a key with the binary and returns the token and its id.
func (h *httpEnv) createKey(tenant string, scopes ...string) (token, id string) {
	h.t.Helper()
	args := []string{"create", "--tenant", tenant, "--name", "e2e " + tenant, "--json"}
	for _, s := range scopes {
		args = append(args, "--scope", s)
	}
	out, errOut, err := h.apikeyBin(args...)
	if err != nil {
		h.t.Fatalf("sluice apikey create: %v\nstdout: %s\nstderr: %s", err, out, errOut)
	}
	var k struct {
		ID     string   `json:"id"`
		Tenant string   `json:"tenant"`
		Scopes []string `json:"scopes"`
		Key    string   `json:"key"`
	}
	if err := json.Unmarshal([]byte(out), &k); err != nil || k.Key == "" || k.ID == "" || k.Tenant != tenant {
		h.t.Fatalf("sluice apikey create --json printed %q (%v)", out, err)
	}
	if _, err := os.Stat(h.relay.dir + "/apikeys.json"); err != nil {
		h.t.Fatalf("the key file is not beside the spool directory: %v\nstderr: %s", err, errOut)
	}
	return k.Key, k.ID
}

// createLiveKey is createKey for a running node: it returns once the
// server accepts the key (the node rereads the key file within a second,
// so a key used at once can get 401).
func (h *httpEnv) createLiveKey(tenant string, scopes ...string) string {
	h.t.Helper()
	key, _ := h.createKey(tenant, scopes...)
	h.waitKeyStatus(key, 404, 5*time.Second)
	return key
}

type httpResp struct {
	status int
	header http.Header
	body   []byte
}

// httpErrorBody is an error answer.
type httpErrorBody struct {
	Error struct {
		Code     string `json:"code"`
		Message  string `json:"message"`
		Field    string `json:"field"`
		SMTPCode int    `json:"smtp_code"`
		Enhanced string `json:"enhanced"`
	} `json:"error"`
}

func (r httpResp) apiError() httpErrorBody {
	var e httpErrorBody
	_ = json.Unmarshal(r.body, &e)
	return e
}

func (r httpResp) String() string { return fmt.Sprintf("%d %s", r.status, bytes.TrimSpace(r.body)) }

// do sends one request; hdr holds extra headers. A transport error fails
// the test (use doErr to get it).
func (h *httpEnv) do(method, path, key string, body []byte, hdr map[string]string) httpResp {
	h.t.Helper()
	r, err := h.doErr(method, path, key, body, hdr)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

func (h *httpEnv) doErr(method, path, key string, body []byte, hdr map[string]string) (httpResp, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, h.base+path, rd)
	if err != nil {
		return httpResp{}, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return httpResp{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return httpResp{}, err
	}
	return httpResp{status: resp.StatusCode, header: resp.Header, body: b}, nil
}

// httpProbeID is a well-formed message id that names no message: a GET of it
// is 404 with a valid key and 401 without one, and queues nothing.
const httpProbeID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"

// waitKeyStatus polls GET /v1/messages/{httpProbeID} until it answers want
// (404: the key works; 401: it is refused) and returns how long it took.
func (h *httpEnv) waitKeyStatus(key string, want int, within time.Duration) time.Duration {
	h.t.Helper()
	start := time.Now()
	for {
		r := h.do("GET", "/v1/messages/"+httpProbeID, key, nil, nil)
		if r.status == want {
			return time.Since(start)
		}
		if time.Since(start) > within {
			h.t.Fatalf("key still answered %s after %v; want %d", r, within, want)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

type httpPostAnswer struct {
	ID         string `json:"id"`
	Recipients []struct {
		Email    string `json:"email"`
		Status   string `json:"status"`
		Code     int    `json:"code"`
		Enhanced string `json:"enhanced"`
		Message  string `json:"message"`
	} `json:"recipients"`
}

type httpStatusAnswer struct {
	ID         string            `json:"id"`
	Sender     string            `json:"sender"`
	Tenant     string            `json:"tenant"`
	Source     string            `json:"source"`
	Tags       []string          `json:"tags"`
	Metadata   map[string]string `json:"metadata"`
	Recipients []httpStatusRcpt  `json:"recipients"`
	Events     []pipeline.Event  `json:"events"`
}

type httpStatusRcpt struct {
	Email    string             `json:"email"`
	State    string             `json:"state"`
	Queue    string             `json:"queue"`
	Attempts int                `json:"attempts"`
	Response *pipeline.Response `json:"response"`
}

func httpJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readEventsTolerant reads the events file, skipping lines that do not
// parse (a kill -9 may tear the last write); it returns the bad lines.
func readEventsTolerant(path string) (evs []pipeline.Event, bad []string) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev pipeline.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			bad = append(bad, sc.Text())
			continue
		}
		if err := testutil.CheckEvent(sc.Bytes()); err != nil {
			// A whole line that is not a schema-valid event is a bug,
			// not a torn write: the caller fails on bad lines.
			bad = append(bad, fmt.Sprintf("%s (does not match docs/event.schema.json: %v)", sc.Text(), err))
			continue
		}
		evs = append(evs, ev)
	}
	return evs, bad
}

func httpNormNL(s string) string {
	return strings.TrimRight(strings.ReplaceAll(s, "\r\n", "\n"), "\n")
}

// ---- TestHTTPEndToEnd ---------------------------------------------------

// TestHTTPEndToEnd: a key created with `sluice apikey` while the server
// runs works without a restart; a JSON message with UTF-8 subject, text,
// html, an attachment, a custom header, tags and metadata runs through the
// Lua pipeline (one recipient refused at on_rcpt), reaches the smarthost
// intact with the stage's header, and its events and status say so.
// Missing, revoked and wrong keys are 401; bad fields are 400 naming the
// field.
func TestHTTPEndToEnd(t *testing.T) {
	h := newHTTPEnv(t)
	h.start()

	// No key, a malformed key, an unknown key: 401 with WWW-Authenticate.
	for name, key := range map[string]string{"none": "", "malformed": "not-a-key", "unknown": "sk_0123456789abcdef_" + strings.Repeat("A", 43)} {
		r := h.do("POST", "/v1/messages", key, []byte(`{"from":"app@sender.test","to":"bob@smart.test","text":"x"}`), nil)
		if r.status != 401 || r.apiError().Error.Code != "unauthorized" || !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s key: %s (WWW-Authenticate %q), want 401 unauthorized", name, r, r.header.Get("WWW-Authenticate"))
		}
	}
	// Issue 17: a 401 leaves a trace with the client address (one line
	// per address per 10 s: the three above make one).
	if logs := h.relay.logText(); strings.Count(logs, "authentication failed") != 1 || !strings.Contains(logs, "source=http") && !strings.Contains(logs, `"source":"http"`) {
		t.Errorf("401s not logged once with their source:\n%s", logs)
	}

	// The key is created after the server started: no restart needed.
	key, keyID := h.createKey("acme", "send")
	took := h.waitKeyStatus(key, 404, 5*time.Second)
	t.Logf("a key created while the server runs worked after %v", took.Round(time.Millisecond))

	attachment := make([]byte, 3000)
	for i := range attachment {
		attachment[i] = byte(i*7 + i/256)
	}
	const (
		subject    = "Grüße ✓"
		attachName = "Grüße-Bericht.bin"
	)
	text := "Hallo Bob,\nGrüße aus dem Test ✓\n" + strings.Repeat("lang ", 40) + "\n"
	html := "<p>Hallo Bob,</p><p>Grüße aus dem <b>Test</b> ✓</p>"
	req := map[string]any{
		"from":    "App <app@sender.test>",
		"to":      []string{"bob@smart.test", "blocked@smart.test"},
		"subject": subject,
		"text":    text,
		"html":    html,
		"attachments": []map[string]any{{
			"filename": attachName, "content_type": "application/octet-stream",
			"content": base64.StdEncoding.EncodeToString(attachment),
		}},
		"headers":  map[string]string{"X-Custom": "v"},
		"tags":     []string{"t1"},
		"metadata": map[string]string{"k": "v"},
	}
	r := h.do("POST", "/v1/messages", key, httpJSON(t, req), nil)
	if r.status != 202 {
		t.Fatalf("POST /v1/messages: %s, want 202", r)
	}
	var ans httpPostAnswer
	if err := json.Unmarshal(r.body, &ans); err != nil || ans.ID == "" {
		t.Fatalf("202 answer %s: %v", r, err)
	}
	if len(ans.Recipients) != 2 {
		t.Fatalf("202 answer has %d recipients, want 2: %s", len(ans.Recipients), r)
	}
	if rc := ans.Recipients[0]; rc.Email != "bob@smart.test" || rc.Status != "queued" {
		t.Errorf("recipient 0: %+v, want bob@smart.test queued", rc)
	}
	if rc := ans.Recipients[1]; rc.Email != "blocked@smart.test" || rc.Status != "rejected" || rc.Code != 550 || rc.Enhanced != "5.1.1" || rc.Message != "blocked" {
		t.Errorf("recipient 1: %+v, want blocked@smart.test rejected 550 5.1.1 blocked", rc)
	}

	// The smarthost gets exactly one message, for bob only.
	waitFor(t, "the message at the smarthost", func() bool { return h.smart.count() >= 1 })
	got := h.smart.messages()[0]
	if got.From != "app@sender.test" || !slices.Equal(got.Rcpts, []string{"bob@smart.test"}) {
		t.Errorf("envelope from=%q rcpts=%v, want app@sender.test -> [bob@smart.test]", got.From, got.Rcpts)
	}
	checkHTTPComposed(t, got.Data, ans.ID, subject, text, html, attachName, attachment)

	// Events: received+delivered for bob, rejected for blocked, all with
	// the tenant, source, tags and metadata.
	evs := h.relay.waitEvents("bob delivered and blocked rejected", func(evs []pipeline.Event) bool {
		return countType(evs, "delivered", "bob@smart.test") >= 1 && countType(evs, "rejected", "blocked@smart.test") >= 1
	})
	var seq []string
	for _, ev := range evs {
		if ev.MessageID != ans.ID {
			t.Errorf("an event of another message: %+v", ev)
			continue
		}
		switch ev.Recipient {
		case "bob@smart.test":
			seq = append(seq, ev.Type)
			if ev.Tenant != "acme" || ev.Source != "http" || ev.Sender != "app@sender.test" || ev.Metadata["k"] != "v" ||
				!slices.Contains(ev.Tags, "t1") || !slices.Contains(ev.Tags, "lua-stage") || ev.Node != "http-e2e-1" {
				t.Errorf("bob's %s event: tenant=%q source=%q sender=%q tags=%v metadata=%v node=%q; want acme, http, app@sender.test, t1+lua-stage, k=v",
					ev.Type, ev.Tenant, ev.Source, ev.Sender, ev.Tags, ev.Metadata, ev.Node)
			}
			if ev.Type == "delivered" && (ev.Response == nil || ev.Response.Code != 250 || !strings.HasPrefix(ev.Queue, "relay:127.0.0.1:")) {
				t.Errorf("delivered event: queue=%q response=%+v", ev.Queue, ev.Response)
			}
		case "blocked@smart.test":
			if ev.Type != "rejected" {
				t.Errorf("blocked@smart.test has a %q event; it was refused at on_rcpt", ev.Type)
				continue
			}
			if ev.Response == nil || ev.Response.Code != 550 || ev.Response.Enhanced != "5.1.1" || ev.Tenant != "acme" || ev.Source != "http" ||
				!slices.Contains(ev.Tags, "t1") || ev.Metadata["k"] != "v" {
				t.Errorf("rejected event: response=%+v tenant=%q source=%q tags=%v metadata=%v", ev.Response, ev.Tenant, ev.Source, ev.Tags, ev.Metadata)
			}
		default:
			t.Errorf("unexpected event %s for %q", ev.Type, ev.Recipient)
		}
	}
	if s := strings.Join(seq, ","); s != "received,delivered" {
		t.Errorf("bob's events %s, want received,delivered", s)
	}

	// GET /v1/messages/{id}: bob delivered. The timeline is committed with
	// the state change, but after the sink's 250: poll.
	var st httpStatusAnswer
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := h.do("GET", "/v1/messages/"+ans.ID, key, nil, nil)
		if r.status != 200 {
			t.Fatalf("GET /v1/messages/%s: %s", ans.ID, r)
		}
		st = httpStatusAnswer{}
		if err := json.Unmarshal(r.body, &st); err != nil {
			t.Fatalf("status answer %s: %v", r, err)
		}
		if i := slices.IndexFunc(st.Recipients, func(x httpStatusRcpt) bool { return x.Email == "bob@smart.test" }); i >= 0 && st.Recipients[i].State == "delivered" {
			rc := st.Recipients[i]
			if rc.Attempts != 1 || rc.Response == nil || rc.Response.Code != 250 || !strings.HasPrefix(rc.Queue, "relay:127.0.0.1:") {
				t.Errorf("status of bob: %+v", rc)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /v1/messages/%s never showed bob delivered: %s", ans.ID, r)
		}
		time.Sleep(25 * time.Millisecond)
	}
	if st.ID != ans.ID || st.Tenant != "acme" || st.Source != "http" || st.Sender != "app@sender.test" || st.Metadata["k"] != "v" || !slices.Contains(st.Tags, "t1") {
		t.Errorf("status answer: id=%s tenant=%q source=%q sender=%q tags=%v metadata=%v", st.ID, st.Tenant, st.Source, st.Sender, st.Tags, st.Metadata)
	}
	for _, rc := range st.Recipients {
		if rc.Email == "blocked@smart.test" && rc.State != "rejected" {
			t.Errorf("status of blocked@smart.test: %+v, want rejected", rc)
		}
	}
	if len(st.Events) < 2 {
		t.Errorf("status timeline has %d events", len(st.Events))
	}

	// Another tenant's key does not see the message.
	otherKey, _ := h.createKey("other")
	h.waitKeyStatus(otherKey, 404, 5*time.Second)
	if r := h.do("GET", "/v1/messages/"+ans.ID, otherKey, nil, nil); r.status != 404 {
		t.Errorf("another tenant's GET of the message: %s, want 404", r)
	}

	// Bad requests: 400 naming the field; nothing is queued.
	bad := []struct {
		name, body, code, field string
	}{
		{"bad address", `{"from":"app@sender.test","to":["bob@smart.test","bob@"],"text":"x"}`, "invalid_field", "to[1]"},
		{"missing from", `{"to":"bob@smart.test","text":"x"}`, "missing_field", "from"},
		{"unknown field", `{"from":"app@sender.test","to":"bob@smart.test","text":"x","sbject":"typo"}`, "unknown_field", "sbject"},
		{"wrong type", `{"from":"app@sender.test","to":"bob@smart.test","subject":5}`, "invalid_field", "subject"},
		{"bad base64", `{"from":"app@sender.test","to":"bob@smart.test","text":"x","attachments":[{"filename":"a.bin","content":"!!notbase64"}]}`, "invalid_field", "attachments[0].content"},
		{"CRLF in header", `{"from":"app@sender.test","to":"bob@smart.test","text":"x","headers":{"X-A":"a\r\nBcc: evil@smart.test"}}`, "invalid_field", "headers.X-A"},
	}
	for _, b := range bad {
		r := h.do("POST", "/v1/messages", key, []byte(b.body), nil)
		e := r.apiError()
		if r.status != 400 || e.Error.Code != b.code || e.Error.Field != b.field {
			t.Errorf("%s: %s, want 400 %s with field %q", b.name, r, b.code, b.field)
		}
	}

	// Revoke the key with the binary while the server runs: refused
	// within about a second (the store rereads the file at most once a
	// second).
	if out, errOut, err := h.apikeyBin("revoke", keyID); err != nil || !strings.Contains(out, keyID) {
		t.Fatalf("sluice apikey revoke: %v\n%s%s", err, out, errOut)
	}
	took = h.waitKeyStatus(key, 401, 3*time.Second)
	t.Logf("a revoked key was refused after %v", took.Round(time.Millisecond))
	r = h.do("POST", "/v1/messages", key, httpJSON(t, map[string]any{"from": "app@sender.test", "to": "bob@smart.test", "subject": "after revoke", "text": "x"}), nil)
	if r.status != 401 || r.apiError().Error.Code != "unauthorized" {
		t.Errorf("POST with a revoked key: %s, want 401", r)
	}
	// The other tenant's key still works.
	if r := h.do("GET", "/v1/messages/"+httpProbeID, otherKey, nil, nil); r.status != 404 {
		t.Errorf("an unrevoked key after another's revocation: %s, want 404", r)
	}

	// Exactly one message: nothing for blocked, nothing from the refused
	// requests, no bounce. Give a wrong one time to arrive.
	time.Sleep(500 * time.Millisecond)
	if n := h.smart.count(); n != 1 {
		for _, m := range h.smart.messages() {
			t.Logf("smarthost got from=%s rcpts=%v:\n%s", m.From, m.Rcpts, m.Data)
		}
		t.Fatalf("the smarthost got %d messages, want exactly 1", n)
	}
	if n := h.mx.count(); n != 0 {
		t.Fatalf("the sender's MX got %d messages (a bounce?), want 0", n)
	}
	if evs := h.relay.readEvents(); countType(evs, "received", "") != 1 {
		t.Errorf("%d received events, want 1:\n%s", countType(evs, "received", ""), describeEvents(evs))
	}
}

// checkHTTPComposed parses a delivered message with go-message and compares it
// with what was posted.
func checkHTTPComposed(t *testing.T, data []byte, id, subject, text, html, attachName string, attachment []byte) {
	t.Helper()
	for _, line := range strings.SplitAfter(string(data), "\r\n") {
		if len(line) > 1000 {
			t.Errorf("a line of %d octets (limit 998 + CRLF)", len(line))
		}
		if strings.Contains(strings.TrimSuffix(line, "\r\n"), "\n") || strings.Contains(strings.TrimSuffix(line, "\r\n"), "\r") {
			t.Errorf("a bare CR or LF in the message: %q", line)
		}
	}
	mr, err := mail.CreateReader(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("go-message cannot read the delivered message: %v\n%s", err, data)
	}
	hdr := mr.Header
	if s, err := hdr.Subject(); err != nil || s != subject {
		t.Errorf("Subject %q (%v), want %q; raw %q", s, err, subject, hdr.Get("Subject"))
	}
	if v := hdr.Get("X-Custom"); v != "v" {
		t.Errorf("X-Custom %q, want v", v)
	}
	if v := hdr.Values("Received"); len(v) != 1 || !strings.HasPrefix(v[0], "from [127.0.0.1] by ") || !strings.Contains(v[0], " with HTTP (key ") {
		t.Errorf("Received %q, want one HTTP trace field", v)
	}
	if v := hdr.Values("X-Tenant"); len(v) != 1 || v[0] != "acme" {
		t.Errorf("X-Tenant %q, want exactly one: acme (added by the Lua stage)", v)
	}
	if from, err := hdr.AddressList("From"); err != nil || len(from) != 1 || from[0].Address != "app@sender.test" || from[0].Name != "App" {
		t.Errorf("From %q (%v)", hdr.Get("From"), err)
	}
	if to, err := hdr.AddressList("To"); err != nil || len(to) != 2 {
		t.Errorf("To %q (%v): want both recipients of the request", hdr.Get("To"), err)
	}
	if mid, err := hdr.MessageID(); err != nil || !strings.HasPrefix(mid, id+"@") {
		t.Errorf("Message-ID %q (%v), want <%s@...>", hdr.Get("Message-Id"), err, id)
	}
	if hdr.Get("Date") == "" || hdr.Get("Mime-Version") != "1.0" {
		t.Errorf("Date %q, MIME-Version %q", hdr.Get("Date"), hdr.Get("Mime-Version"))
	}
	if ct, _, _ := hdr.ContentType(); ct != "multipart/mixed" {
		t.Errorf("top Content-Type %q, want multipart/mixed", ct)
	}
	var gotText, gotHTML string
	var gotAttach []byte
	var parts []string
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading the parts: %v", err)
		}
		b, err := io.ReadAll(p.Body)
		if err != nil {
			t.Fatalf("reading a part: %v", err)
		}
		switch ph := p.Header.(type) {
		case *mail.InlineHeader:
			ct, params, _ := ph.ContentType()
			parts = append(parts, ct)
			if cs := strings.ToLower(params["charset"]); cs != "utf-8" {
				t.Errorf("%s charset %q, want utf-8", ct, cs)
			}
			switch ct {
			case "text/plain":
				gotText = string(b)
			case "text/html":
				gotHTML = string(b)
			}
		case *mail.AttachmentHeader:
			ct, _, _ := ph.ContentType()
			parts = append(parts, "attachment:"+ct)
			name, err := ph.Filename()
			if err != nil || name != attachName {
				t.Errorf("attachment file name %q (%v), want %q; Content-Disposition %q", name, err, attachName, ph.Get("Content-Disposition"))
			}
			gotAttach = b
		}
	}
	if want := []string{"text/plain", "text/html", "attachment:application/octet-stream"}; !slices.Equal(parts, want) {
		t.Errorf("parts %v, want %v", parts, want)
	}
	if httpNormNL(gotText) != httpNormNL(text) {
		t.Errorf("text:\n%q\nwant\n%q", gotText, text)
	}
	if httpNormNL(gotHTML) != httpNormNL(html) {
		t.Errorf("html:\n%q\nwant\n%q", gotHTML, html)
	}
	if !bytes.Equal(gotAttach, attachment) {
		t.Errorf("attachment: %d bytes differ from the %d posted", len(gotAttach), len(attachment))
	}
}

// ---- TestHTTPCrashSafety ------------------------------------------------

var httpCrashSubjectRE = regexp.MustCompile(`(?m)^Subject: (http-crash-\d+)\r$`)

// TestHTTPCrashSafety: 300 messages POSTed by 8 keep-alive clients, kill -9
// while the slowed smarthost is still receiving, restart: every message
// that got a 202 reaches the sink. Duplicates are reported; none may be
// lost.
func TestHTTPCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test skipped in -short mode")
	}
	h := newHTTPEnv(t)
	// Slow the sink so that the kill lands mid-delivery.
	h.smart.dataReply = func(m *sinkMsg) error { time.Sleep(100 * time.Millisecond); return nil }
	h.start()
	key, _ := h.createKey("acme")
	h.waitKeyStatus(key, 404, 5*time.Second)

	const total, clients = 300, 8
	var (
		mu     sync.Mutex
		acked  = map[string]string{} // subject -> id
		failed []string
		reused atomic.Int64
		fresh  atomic.Int64
		wg     sync.WaitGroup
		trace  = &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
			if i.Reused {
				reused.Add(1)
			} else {
				fresh.Add(1)
			}
		}}
		started = time.Now()
	)
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := c; i < total; i += clients {
				subj := fmt.Sprintf("http-crash-%d", i)
				body, _ := json.Marshal(map[string]any{"from": "app@sender.test", "to": []string{"bob@smart.test"}, "subject": subj, "text": "Hello " + subj + "\n"})
				req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(t.Context(), trace), "POST", h.base+"/v1/messages", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer "+key)
				resp, err := h.client.Do(req)
				if err != nil {
					mu.Lock()
					failed = append(failed, fmt.Sprintf("%s: %v", subj, err))
					mu.Unlock()
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				var ans httpPostAnswer
				mu.Lock()
				if resp.StatusCode == 202 && json.Unmarshal(b, &ans) == nil && ans.ID != "" {
					acked[subj] = ans.ID
				} else {
					failed = append(failed, fmt.Sprintf("%s: %d %s", subj, resp.StatusCode, bytes.TrimSpace(b)))
				}
				mu.Unlock()
			}
		}(c)
	}
	wg.Wait()
	postTime := time.Since(started)
	t.Logf("%d POSTs in %v (%.0f/s); connections: %d new, %d reused", total, postTime.Round(time.Millisecond),
		float64(total)/postTime.Seconds(), fresh.Load(), reused.Load())
	if len(acked) != total {
		t.Fatalf("only %d of %d messages got a 202 before the kill; failures: %v", len(acked), total, failed[:min(len(failed), 10)])
	}
	if reused.Load() == 0 {
		t.Errorf("no request reused a connection: keep-alive does not work")
	}
	ids := map[string]bool{}
	for _, id := range acked {
		if ids[id] {
			t.Fatalf("id %s was given to two messages", id)
		}
		ids[id] = true
	}
	// Kill while the sink is receiving (at least one delivery started).
	waitFor(t, "the first delivery", func() bool { return h.smart.count() >= 1 })
	before := h.smart.count()
	h.relay.kill9()
	h.client.CloseIdleConnections()
	t.Logf("killed with %d of %d at the sink", before, total)
	if before >= total {
		t.Log("note: every message was delivered before the kill; the restart path is still exercised")
	}

	h.start()
	seen := map[string]int{}
	var lost []string
	deadline := time.Now().Add(60 * time.Second)
	for {
		clear(seen)
		for _, m := range h.smart.messages() {
			if sm := httpCrashSubjectRE.FindSubmatch(m.Data); sm != nil {
				seen[string(sm[1])]++
			}
		}
		lost = lost[:0]
		for subj := range acked {
			if seen[subj] == 0 {
				lost = append(lost, subj)
			}
		}
		if len(lost) == 0 {
			break
		}
		if time.Now().After(deadline) {
			slices.Sort(lost)
			t.Fatalf("%d of %d acknowledged messages never reached the sink after the restart (lost): %v", len(lost), total, lost[:min(len(lost), 20)])
		}
		time.Sleep(50 * time.Millisecond)
	}
	dups := 0
	for subj, n := range seen {
		if _, ok := acked[subj]; !ok {
			t.Errorf("the sink got %q, which was never acknowledged", subj)
		}
		dups += n - 1
	}
	t.Logf("HTTP crash safety: %d acknowledged, %d distinct delivered, 0 lost, %d duplicates (delivered before the kill, outcome not yet durable)", len(acked), len(seen), dups)

	// Every acknowledged message also gets its delivered event (the
	// outbox survives the kill), with the HTTP source and the tenant.
	var evs []pipeline.Event
	var badLines []string
	deadline = time.Now().Add(30 * time.Second)
	for {
		evs, badLines = readEventsTolerant(h.relay.events)
		delivered := map[string]bool{}
		for _, ev := range evs {
			if ev.Type == "delivered" {
				delivered[ev.MessageID] = true
			}
		}
		missing := 0
		for id := range ids {
			if !delivered[id] {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d acknowledged messages have no delivered event in %s", missing, h.relay.events)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(badLines) > 0 {
		t.Errorf("the events file has %d lines that are not JSON (torn by the kill?): %q", len(badLines), badLines[:min(len(badLines), 3)])
	}
	for _, ev := range evs {
		if ids[ev.MessageID] && (ev.Source != "http" || ev.Tenant != "acme") {
			t.Errorf("event %s of %s: source=%q tenant=%q", ev.Type, ev.MessageID, ev.Source, ev.Tenant)
			break
		}
	}
}

// ---- TestHTTPIdempotencyAcrossRestart -------------------------------------

// TestHTTPIdempotencyAcrossRestart: an answer stored under an
// Idempotency-Key survives a restart: the same request gets the same id
// and queues nothing; another body with the key is 422.
func TestHTTPIdempotencyAcrossRestart(t *testing.T) {
	h := newHTTPEnv(t)
	h.start()
	key, _ := h.createKey("acme")
	h.waitKeyStatus(key, 404, 5*time.Second)

	const idemKey = "invoice-2026-0042"
	body := httpJSON(t, map[string]any{
		"from": "Billing <billing@sender.test>", "to": []string{"bob@smart.test"},
		"subject": "idempotent invoice", "text": "Your invoice.\n", "tags": []string{"invoice"},
	})
	hdr := map[string]string{"Idempotency-Key": idemKey}
	r1 := h.do("POST", "/v1/messages", key, body, hdr)
	if r1.status != 202 {
		t.Fatalf("first POST: %s, want 202", r1)
	}
	if r1.header.Get("Idempotent-Replayed") != "" {
		t.Errorf("the first answer says Idempotent-Replayed: %q", r1.header.Get("Idempotent-Replayed"))
	}
	var a1 httpPostAnswer
	if err := json.Unmarshal(r1.body, &a1); err != nil || a1.ID == "" {
		t.Fatalf("first answer %s: %v", r1, err)
	}
	// A repeat before the restart is a replay too.
	if r := h.do("POST", "/v1/messages", key, body, hdr); r.status != 202 || r.header.Get("Idempotent-Replayed") != "true" || !bytes.Equal(bytes.TrimSpace(r.body), bytes.TrimSpace(r1.body)) {
		t.Errorf("repeat before the restart: %s (Idempotent-Replayed %q), want the first answer %s", r, r.header.Get("Idempotent-Replayed"), r1)
	}
	// Let the delivery finish (and its outcome be recorded) before the
	// restart, so that any second copy can only come from the replay.
	h.relay.waitEvents("the delivery", func(evs []pipeline.Event) bool { return countType(evs, "delivered", "bob@smart.test") == 1 })
	if n := h.smart.count(); n != 1 {
		t.Fatalf("the sink has %d messages after the first delivery", n)
	}

	h.relay.stop()
	h.client.CloseIdleConnections()
	if code := h.relay.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("SIGTERM: exit code %d, want 0", code)
	}
	h.start()
	// The key file is read at start: the key works at once.
	r2 := h.do("POST", "/v1/messages", key, body, hdr)
	if r2.status != 202 {
		t.Fatalf("POST after the restart: %s, want 202 (a replay)", r2)
	}
	var a2 httpPostAnswer
	if err := json.Unmarshal(r2.body, &a2); err != nil {
		t.Fatalf("answer after the restart %s: %v", r2, err)
	}
	if a2.ID != a1.ID {
		t.Errorf("after the restart the same request got id %s, want %s (the stored answer was lost: the message was queued again)", a2.ID, a1.ID)
	}
	if r2.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("answer after the restart lacks Idempotent-Replayed: true (headers %v)", r2.header)
	}
	if !bytes.Equal(bytes.TrimSpace(r2.body), bytes.TrimSpace(r1.body)) {
		t.Errorf("replayed answer %s differs from the first %s", bytes.TrimSpace(r2.body), bytes.TrimSpace(r1.body))
	}
	// The same key with another body is refused.
	other := bytes.Replace(body, []byte("idempotent invoice"), []byte("another invoice"), 1)
	if r := h.do("POST", "/v1/messages", key, other, hdr); r.status != 422 || r.apiError().Error.Code != "idempotency_key_reused" {
		t.Errorf("same key, other body: %s, want 422 idempotency_key_reused", r)
	}

	// A marker sent after the replay: once it arrived, a copy queued by
	// the replay would have had its chance too (same queue, queued
	// earlier). Then a short grace for stragglers.
	marker := httpJSON(t, map[string]any{"from": "billing@sender.test", "to": "bob@smart.test", "subject": "marker", "text": "marker\n"})
	if r := h.do("POST", "/v1/messages", key, marker, nil); r.status != 202 {
		t.Fatalf("marker: %s", r)
	}
	countSubj := func(subj string) int {
		n := 0
		for _, m := range h.smart.messages() {
			if bytes.Contains(m.Data, []byte("\r\nSubject: "+subj+"\r\n")) {
				n++
			}
		}
		return n
	}
	waitFor(t, "the marker", func() bool { return countSubj("marker") == 1 })
	time.Sleep(500 * time.Millisecond)
	if n := countSubj("idempotent invoice"); n != 1 {
		t.Fatalf("the sink got %d copies of the idempotent message, want exactly 1", n)
	}
	// Only the marker is untagged: every "received" event tagged invoice
	// belongs to the idempotent request.
	evs := h.relay.waitEvents("the marker's events", func(evs []pipeline.Event) bool { return countType(evs, "delivered", "") >= 2 })
	received := 0
	for _, ev := range evs {
		if ev.Type == "received" && slices.Contains(ev.Tags, "invoice") {
			received++
			if ev.MessageID != a1.ID {
				t.Errorf("a second message %s was queued for the idempotent request", ev.MessageID)
			}
		}
	}
	if received != 1 {
		t.Errorf("%d received events for the idempotent request, want 1:\n%s", received, describeEvents(evs))
	}
	// Its status is still there after the restart.
	if r := h.do("GET", "/v1/messages/"+a1.ID, key, nil, nil); r.status != 200 || !strings.Contains(string(r.body), `"state":"delivered"`) {
		t.Errorf("status after the restart: %s", r)
	}

	// The answer is committed with the message: it survives a kill -9
	// right after the 202 too (delivery may or may not have started).
	body3 := httpJSON(t, map[string]any{"from": "billing@sender.test", "to": "bob@smart.test", "subject": "killed invoice", "text": "x\n"})
	hdr3 := map[string]string{"Idempotency-Key": "invoice-killed"}
	r3 := h.do("POST", "/v1/messages", key, body3, hdr3)
	if r3.status != 202 {
		t.Fatalf("POST before kill -9: %s", r3)
	}
	h.relay.kill9()
	h.client.CloseIdleConnections()
	h.start()
	r4 := h.do("POST", "/v1/messages", key, body3, hdr3)
	if r4.status != 202 || r4.header.Get("Idempotent-Replayed") != "true" || !bytes.Equal(bytes.TrimSpace(r4.body), bytes.TrimSpace(r3.body)) {
		t.Errorf("replay after kill -9: %s (Idempotent-Replayed %q), want the first answer %s", r4, r4.header.Get("Idempotent-Replayed"), r3)
	}
	waitFor(t, "the message sent before the kill", func() bool { return countSubj("killed invoice") >= 1 })
}
