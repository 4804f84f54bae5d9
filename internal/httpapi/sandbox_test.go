package httpapi

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3filter"

	"github.com/sluice-mta/sluice/internal/capture"
	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/testutil"
)

func init() {
	// The raw message is validated as a string.
	openapi3filter.RegisterBodyDecoder("message/rfc822", openapi3filter.PlainBodyDecoder)
}

const sandboxMsg = "From: App <app@sender.test>\r\nTo: bob@dest.test\r\nSubject: Welcome =?utf-8?q?h=C3=A9llo?=\r\n" +
	"Message-ID: <m1@sender.test>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n" +
	"--b1\r\nContent-Type: multipart/alternative; boundary=b2\r\n\r\n" +
	"--b2\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nyour code is 4242\r\n" +
	"--b2\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>your code is <b>4242</b></p>\r\n--b2--\r\n" +
	"--b1\r\nContent-Type: application/pdf; name=a.pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nUERGIQ==\r\n--b1--\r\n"

// sandboxEnv is the API test environment with a capture store holding
// one message of tenant acme (the send key's) and one of tenant other.
func sandboxEnv(t *testing.T) (*env, *capture.Store, *capture.Summary, *capture.Summary) {
	e := newEnv(t, envOptions{})
	st, err := capture.Open(filepath.Join(t.TempDir(), "sandbox"), capture.Options{Retention: config.SandboxRetention{Messages: 100},
		History: e.sp.History, Logger: testLogger(t, true)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e.srv.UseSandbox(st)
	a, err := st.Put("acme", "", "app@sender.test", []string{"bob@dest.test"}, []byte(sandboxMsg))
	if err != nil {
		t.Fatal(err)
	}
	o, err := st.Put("other", "", "app@sender.test", []string{"bob@dest.test"}, []byte(strings.Replace(sandboxMsg, "Welcome", "Other", 1)))
	if err != nil {
		t.Fatal(err)
	}
	return e, st, a, o
}

func TestSandboxAPI(t *testing.T) {
	e, st, a, o := sandboxEnv(t)

	var page struct {
		Total    int
		Messages []capture.Summary
	}
	r := e.do("GET", "/v1/sandbox/messages?to=BOB@dest.test", e.sendKey, nil)
	r.json(t, &page)
	if r.Status != 200 || page.Total != 1 || page.Messages[0].ID != a.ID || page.Messages[0].Subject != "Welcome héllo" {
		t.Fatalf("list: %d %s", r.Status, r.Body)
	}
	for q, want := range map[string]int{"text=4242": 1, "text=nothere": 0, "subject=welcome": 1, "subject=Other": 0, "from=app@": 1, "tag=x": 0,
		"since=" + a.Created.Add(time.Second).Format(time.RFC3339Nano): 0, "until=" + a.Created.Add(time.Second).Format(time.RFC3339Nano): 1} {
		r := e.do("GET", "/v1/sandbox/messages?"+q, e.sendKey, nil)
		r.json(t, &page)
		if r.Status != 200 || len(page.Messages) != want {
			t.Errorf("%s: %d %s, want %d messages", q, r.Status, r.Body, want)
		}
	}
	// Another tenant's message is not there for this key.
	for _, p := range []string{"", "/raw", "/events"} {
		if r := e.do("GET", "/v1/sandbox/messages/"+o.ID+p, e.sendKey, nil); r.Status != 404 {
			t.Errorf("GET other's message%s: %d %s", p, r.Status, r.Body)
		}
	}
	if r := e.do("GET", "/v1/sandbox/messages?tenant=other", e.sendKey, nil); r.Status != 403 {
		t.Errorf("send key naming a tenant: %d %s", r.Status, r.Body)
	}
	r = e.do("GET", "/v1/sandbox/messages?tenant=other", e.adminKey, nil)
	r.json(t, &page)
	if r.Status != 200 || page.Total != 1 || page.Messages[0].ID != o.ID {
		t.Errorf("admin naming other: %d %s", r.Status, r.Body)
	}

	var msg struct {
		capture.Summary
		Headers     map[string][]string
		Text, HTML  string
		Attachments []capture.Attachment
	}
	r = e.do("GET", "/v1/sandbox/messages/"+a.ID, e.sendKey, nil)
	r.json(t, &msg)
	sum := sha256.Sum256([]byte("PDF!"))
	if r.Status != 200 || msg.Text != "your code is 4242" || !strings.Contains(msg.HTML, "<b>4242</b>") || len(msg.Attachments) != 1 ||
		msg.Attachments[0].Filename != "a.pdf" || msg.Attachments[0].SHA256 != hex.EncodeToString(sum[:]) || msg.Attachments[0].Size != 4 ||
		msg.Headers["Message-Id"][0] != "<m1@sender.test>" {
		t.Fatalf("get: %d %s", r.Status, r.Body)
	}
	r = e.do("GET", "/v1/sandbox/messages/"+a.ID+"/raw", e.sendKey, nil)
	if r.Status != 200 || string(r.Body) != sandboxMsg || r.Header.Get("Content-Type") != "message/rfc822" {
		t.Fatalf("raw: %d %q", r.Status, r.Body)
	}
	if r := e.do("GET", "/v1/sandbox/messages/"+a.ID+"/events", e.sendKey, nil); r.Status != 200 || !strings.Contains(string(r.Body), `"events":[]`) {
		t.Fatalf("events: %d %s", r.Status, r.Body)
	}

	// Assertions that need no network.
	var ans struct {
		Passed  bool
		Results []capture.Result
	}
	r = e.do("POST", "/v1/sandbox/messages/"+a.ID+"/assert", e.sendKey, map[string]any{"checks": []map[string]any{
		{"type": "parts", "text": true, "html": true},
		{"type": "header", "name": "message-id", "contains": "m1@"},
		{"type": "header", "name": "List-Unsubscribe", "present": false},
		{"type": "attachment", "filename": "a.pdf", "sha256": hex.EncodeToString(sum[:])},
		{"type": "dmarc"},
	}})
	r.json(t, &ans)
	if r.Status != 200 || !ans.Passed || len(ans.Results) != 5 {
		t.Fatalf("assert: %d %s", r.Status, r.Body)
	}
	r = e.do("POST", "/v1/sandbox/messages/"+a.ID+"/assert", e.sendKey, map[string]any{"checks": []map[string]any{
		{"type": "parts", "html": false}, {"type": "attachment", "sha256": "00"}, {"type": "dkim"}}})
	r.json(t, &ans)
	if r.Status != 200 || ans.Passed || ans.Results[0].Passed || ans.Results[1].Passed || ans.Results[2].Passed || ans.Results[2].Reason != "no DKIM-Signature field" {
		t.Fatalf("failing assert: %d %s", r.Status, r.Body)
	}
	for body, field := range map[string]string{`{"checks":[]}`: "checks", `{"checks":[{"type":"header"}]}`: "checks[0].name", `{"checks":[{"type":"x"}]}`: "checks[0].type", `{"chex":1}`: "chex"} {
		r := e.do("POST", "/v1/sandbox/messages/"+a.ID+"/assert", e.sendKey, json.RawMessage(body))
		if r.Status != 400 || r.errorOf(t).Field != field {
			t.Errorf("%s: %d %s, want 400 naming %s", body, r.Status, r.Body, field)
		}
	}

	// Wait: an existing match at once; none: 408; bad timeout: 400.
	r = e.do("GET", "/v1/sandbox/wait?subject=welcome&timeout=1s", e.sendKey, nil)
	if r.Status != 200 || !strings.Contains(string(r.Body), a.ID) {
		t.Fatalf("wait for an existing message: %d %s", r.Status, r.Body)
	}
	r = e.do("GET", "/v1/sandbox/wait?subject=never&timeout=0.2", e.sendKey, nil)
	if r.Status != 408 || r.errorOf(t).Code != codeWaitTimeout {
		t.Fatalf("wait for nothing: %d %s", r.Status, r.Body)
	}
	if r := e.do("GET", "/v1/sandbox/wait?timeout=10m", e.sendKey, nil); r.Status != 400 || r.errorOf(t).Field != "timeout" {
		t.Fatalf("wait 10m: %d %s", r.Status, r.Body)
	}
	if r := e.do("GET", "/v1/sandbox/messages?since=yesterday", e.sendKey, nil); r.Status != 400 || r.errorOf(t).Field != "since" {
		t.Fatalf("bad since: %d %s", r.Status, r.Body)
	}
	var many []string
	for i := range capture.MaxTerms + 1 {
		many = append(many, "w"+strconv.Itoa(i))
	}
	if r := e.do("GET", "/v1/sandbox/messages?text="+url.QueryEscape(strings.Join(many, " ")), e.sendKey, nil); r.Status != 400 || r.errorOf(t).Field != "text" {
		t.Fatalf("%d distinct terms: %d %s", len(many), r.Status, r.Body)
	}
	if r := e.do("GET", "/v1/sandbox/messages?text="+url.QueryEscape(strings.Repeat("w1 ", 1000)), e.sendKey, nil); r.Status != 200 {
		t.Fatalf("one term repeated: %d %s", r.Status, r.Body)
	}
	if r := e.do("GET", "/sandbox/api/v1/search?query="+url.QueryEscape(strings.Join(many, " ")), e.sendKey, nil); r.Status != 400 || r.errorOf(t).Field != "query" {
		t.Fatalf("Mailpit search with %d distinct terms: %d %s", len(many), r.Status, r.Body)
	}
	if r := e.do("GET", "/v1/sandbox/messages?color=red", e.sendKey, nil); r.Status != 400 || r.errorOf(t).Field != "color" {
		t.Fatalf("unknown parameter: %d %s", r.Status, r.Body)
	}
	if r := e.do("GET", "/v1/sandbox/messages", "", nil); r.Status != 401 {
		t.Fatalf("no key: %d %s", r.Status, r.Body)
	}

	// Delete one, then all.
	if r := e.do("DELETE", "/v1/sandbox/messages/"+o.ID, e.sendKey, nil); r.Status != 404 {
		t.Fatalf("deleting another tenant's: %d %s", r.Status, r.Body)
	}
	if r := e.do("DELETE", "/v1/sandbox/messages/"+a.ID, e.sendKey, nil); r.Status != 200 {
		t.Fatalf("delete: %d %s", r.Status, r.Body)
	}
	if _, ok := st.Get("acme", a.ID); ok {
		t.Fatal("deleted message still there")
	}
	if r := e.do("DELETE", "/v1/sandbox/messages?tenant=other", e.adminKey, nil); r.Status != 200 || !strings.Contains(string(r.Body), `"deleted":1`) {
		t.Fatalf("delete all: %d %s", r.Status, r.Body)
	}
	if _, ok := st.Get("other", o.ID); ok {
		t.Fatal("message still there after delete all")
	}
}

// A wait started before the capture returns it; the stream sends it as
// an event; both see only their tenant's mail.
func TestSandboxWaitAndStream(t *testing.T) {
	e, st, _, _ := sandboxEnv(t)
	// The stream is served without the OpenAPI check wrapper (which
	// buffers responses).
	raw := httptest.NewServer(e.srv)
	t.Cleanup(raw.Close)
	req, _ := http.NewRequest("GET", raw.URL+"/v1/sandbox/stream?to=carol@", nil)
	req.Header.Set("Authorization", "Bearer "+e.sendKey)
	hres, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer hres.Body.Close()
	if hres.StatusCode != 200 || hres.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %d %v", hres.StatusCode, hres.Header)
	}
	br := bufio.NewReader(hres.Body)
	if line, _ := br.ReadString('\n'); !strings.HasPrefix(line, ": ") {
		t.Fatalf("first line %q", line)
	}
	got := make(chan resp, 1)
	go func() { got <- e.do("GET", "/v1/sandbox/wait?to=carol@dest.test&timeout=30s", e.sendKey, nil) }()
	// The wait has registered once the hub holds it; it is the only
	// way to know without a sleep.
	waitForWaiters(t, st, "acme", 2) // the stream and the wait
	if _, err := st.Put("other", "", "x@sender.test", []string{"carol@dest.test"}, []byte("Subject: other's\r\n\r\nx\r\n")); err != nil {
		t.Fatal(err)
	}
	sm, err := st.Put("acme", "", "x@sender.test", []string{"carol@dest.test"}, []byte("Subject: acme's\r\n\r\nx\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.Status != 200 || !strings.Contains(string(r.Body), sm.ID) {
		t.Fatalf("wait: %d %s", r.Status, r.Body)
	}
	var ev []string
	for len(ev) < 3 {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(line, ":") || line == "\n" {
			continue
		}
		ev = append(ev, strings.TrimSpace(line))
	}
	if ev[0] != "id: "+sm.ID || ev[1] != "event: message" || !strings.Contains(ev[2], `"subject":"acme's"`) {
		t.Fatalf("stream event: %q", ev)
	}
}

func waitForWaiters(t *testing.T, st *capture.Store, tenant string, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for st.Waiters(tenant) < n {
		if ctx.Err() != nil {
			t.Fatalf("%d waiters, want %d", st.Waiters(tenant), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// BenchmarkSandboxWaits1000 holds 1,000 concurrent GET /v1/sandbox/wait
// requests over real loopback connections and reports the memory they
// hold: heap and stacks of the whole process, so the client side (its
// connections and goroutines) is counted too — an upper bound for the
// server's share.
func BenchmarkSandboxWaits1000(b *testing.B) {
	e := newEnv(b, envOptions{quiet: true})
	st, err := capture.Open(filepath.Join(b.TempDir(), "sandbox"), capture.Options{Logger: testLogger(b, true)})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	e.srv.UseSandbox(st)
	// Served without the OpenAPI check wrapper, which buffers responses
	// (and would flag the cancelled waits, which get no answer).
	raw := httptest.NewServer(e.srv)
	defer raw.Close()
	tr := &http.Transport{MaxIdleConnsPerHost: 2000, MaxConnsPerHost: 0}
	client := &http.Client{Transport: tr, Timeout: time.Minute}
	defer tr.CloseIdleConnections()
	for i := 0; i < b.N; i++ {
		testutil.ReportHeldWaits(b, 1000, func(ctx context.Context, j int) {
			req, _ := http.NewRequestWithContext(ctx, "GET", raw.URL+"/v1/sandbox/wait?timeout=60s&to=user"+strconv.Itoa(j)+"@", nil)
			req.Header.Set("Authorization", "Bearer "+e.sendKey)
			if resp, err := client.Do(req); err == nil {
				resp.Body.Close()
			}
		}, func() bool { return st.Waiters("acme") == 1000 })
	}
}

// The Mailpit-compatible paths answer in Mailpit's shapes, tenant-scoped.
func TestSandboxMailpitPaths(t *testing.T) {
	e, st, a, o := sandboxEnv(t)
	var list struct {
		Total, Count int
		Messages     []struct {
			ID, Subject, MessageID string
			From                   struct{ Address string }
			Attachments            int
		}
	}
	r := e.do("GET", "/sandbox/api/v1/messages", e.sendKey, nil)
	r.json(t, &list)
	if r.Status != 200 || list.Total != 1 || list.Messages[0].ID != a.ID || list.Messages[0].From.Address != "app@sender.test" ||
		list.Messages[0].MessageID != "m1@sender.test" || list.Messages[0].Attachments != 1 {
		t.Fatalf("list: %d %s", r.Status, r.Body)
	}
	for q, want := range map[string]int{`to:bob@dest.test`: 1, `subject:"Welcome héllo"`: 1, `4242`: 1, `to:nobody@dest.test`: 0, `subject:Other`: 0} {
		r := e.do("GET", "/sandbox/api/v1/search?query="+url.QueryEscape(q), e.sendKey, nil)
		r.json(t, &list)
		if r.Status != 200 || list.Count != want {
			t.Errorf("search %s: %d %s, want %d", q, r.Status, r.Body, want)
		}
	}
	var m struct {
		ID, Text, HTML string
		From           struct{ Name, Address string }
		Attachments    []struct {
			FileName string
			Size     int
		}
	}
	r = e.do("GET", "/sandbox/api/v1/message/"+a.ID, e.sendKey, nil)
	r.json(t, &m)
	if r.Status != 200 || m.From.Name != "App" || m.Text != "your code is 4242" || len(m.Attachments) != 1 || m.Attachments[0].FileName != "a.pdf" {
		t.Fatalf("message: %d %s", r.Status, r.Body)
	}
	if r := e.do("GET", "/sandbox/api/v1/message/"+o.ID, e.sendKey, nil); r.Status != 404 {
		t.Fatalf("another tenant's message: %d %s", r.Status, r.Body)
	}
	if r := e.do("GET", "/sandbox/api/v1/message/"+a.ID+"/raw", e.sendKey, nil); r.Status != 200 || string(r.Body) != sandboxMsg {
		t.Fatalf("raw: %d", r.Status)
	}
	// Mailpit's body {"IDs": [...]} deletes only those messages.
	if r := e.do("DELETE", "/sandbox/api/v1/messages", e.sendKey, map[string]any{"IDs": []string{"01NOSUCHMESSAGE0000000000", o.ID}}); r.Status != 200 || string(r.Body) != "ok" {
		t.Fatalf("delete by IDs: %d %s", r.Status, r.Body)
	}
	if _, ok := st.Get("acme", a.ID); !ok {
		t.Fatal("a delete naming other IDs deleted every message")
	}
	if r := e.do("DELETE", "/sandbox/api/v1/messages", e.sendKey, `{"IDs": 5}`); r.Status != 400 || !strings.Contains(string(r.Body), "IDs") {
		t.Fatalf("bad IDs: %d %s", r.Status, r.Body)
	}
	if r := e.do("DELETE", "/sandbox/api/v1/messages", e.sendKey, nil); r.Status != 200 || string(r.Body) != "ok" {
		t.Fatalf("delete: %d %s", r.Status, r.Body)
	}
	if _, ok := st.Get("acme", a.ID); ok {
		t.Fatal("not deleted")
	}
	if _, ok := st.Get("other", o.ID); !ok {
		t.Fatal("another tenant's message was deleted")
	}
}

// TestSandboxWaitEndsAtShutdown: a pending wait answers 503 when the
// server shuts down instead of holding the shutdown until its own timeout
// (up to 5 minutes) or the grace period, whichever comes first.
func TestSandboxWaitEndsAtShutdown(t *testing.T) {
	e, st, _, _ := sandboxEnv(t)
	got := make(chan resp, 1)
	go func() { got <- e.do("GET", "/v1/sandbox/wait?to=nobody@dest.test&timeout=5m", e.sendKey, nil) }()
	waitForWaiters(t, st, "acme", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with a pending wait: %v", err)
	}
	r := <-got
	if r.Status != http.StatusServiceUnavailable || !strings.Contains(string(r.Body), "shutting down") {
		t.Fatalf("wait at shutdown: %d %s", r.Status, r.Body)
	}
}

// Mailpit's ID "latest" names the newest message of the key's tenant (test
// helpers read /message/latest), never another tenant's newer one.
func TestSandboxMailpitLatest(t *testing.T) {
	e, st, a, o := sandboxEnv(t) // o (tenant other) is newer than a
	var m struct{ ID, Subject string }
	r := e.do("GET", "/sandbox/api/v1/message/latest", e.sendKey, nil)
	r.json(t, &m)
	if r.Status != 200 || m.ID != a.ID {
		t.Fatalf("latest of acme: %d %s, want %s", r.Status, r.Body, a.ID)
	}
	r = e.do("GET", "/sandbox/api/v1/message/latest", e.otherKey, nil)
	r.json(t, &m)
	if r.Status != 200 || m.ID != o.ID {
		t.Fatalf("latest of other: %d %s, want %s", r.Status, r.Body, o.ID)
	}
	r = e.do("GET", "/sandbox/api/v1/message/latest/raw", e.sendKey, nil)
	if r.Status != 200 || !strings.Contains(string(r.Body), "Subject: Welcome") {
		t.Fatalf("latest raw: %d %s", r.Status, r.Body)
	}
	if _, err := st.DeleteAll("acme"); err != nil {
		t.Fatal(err)
	}
	if r = e.do("GET", "/sandbox/api/v1/message/latest", e.sendKey, nil); r.Status != 404 {
		t.Fatalf("latest of an empty inbox: %d %s", r.Status, r.Body)
	}
}

// TestSandboxWaitOutlivesWriteTimeout: a wait as long as the server's write
// timeout (5 minutes, the longest wait allowed) still gets its 408; without
// its own write deadline the answer is written past the server's and the
// client sees the connection end instead.
func TestSandboxWaitOutlivesWriteTimeout(t *testing.T) {
	e, _, _, _ := sandboxEnv(t)
	raw := httptest.NewUnstartedServer(e.srv)
	raw.Config.WriteTimeout = time.Second // stands for the 5 minutes of a real server
	raw.Start()
	t.Cleanup(raw.Close)
	req, _ := http.NewRequest("GET", raw.URL+"/v1/sandbox/wait?to=nobody@dest.test&timeout=2s", nil)
	req.Header.Set("Authorization", "Bearer "+e.sendKey)
	hres, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("wait longer than the write timeout: %v", err)
	}
	defer hres.Body.Close()
	body, err := io.ReadAll(hres.Body)
	if err != nil || hres.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(body), "wait_timeout") {
		t.Fatalf("wait longer than the write timeout: %d %s %v", hres.StatusCode, body, err)
	}
}
