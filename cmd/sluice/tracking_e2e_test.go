package main

// End-to-end tests of engagement tracking against the real binary: the
// hosted-API payload with "track_opens", delivery to an SMTP sink, the
// pixel and the one-click unsubscribe fetched over the HTTP listener
// with the tracking host's name, and the events in the JSONL file.

import (
	"bytes"
	"encoding/json"
	"io"
	"mime/quotedprintable"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/pipeline"
)

const trackingConfig = `
local sluice = require("sluice")
sluice.node { name = "track-e2e-1", hostname = "relay.e2e.test" }
sluice.spool { path = "{{SPOOL}}" }
sluice.events { file = "{{EVENTS}}" }
sluice.listen_smtp { addr = "{{SMTP}}" }
sluice.listen_http { addr = "{{HTTP}}" }
sluice.delivery {
  resolver = "{{DNS}}",
  port = {{MXPORT}},
  retry = { initial = "200ms", max = "200ms", jitter = 0 },
  idle_timeout = "1s",
}
sluice.tracking {
  signing_key = "track.key",
  machine_window = "0s",
  tenants = { { name = "acme", base_url = "http://t.acme.test" } },
}
`

func newTrackingEnv(t *testing.T) *httpEnv {
	t.Helper()
	h := &httpEnv{t: t, dns: dnstest.NewServer(t), mx: newSink(t), smart: newSink(t)}
	for _, d := range []string{"example.com", "myapp.com"} {
		h.dns.AddMX(d, 10, "mx1."+d)
		h.dns.AddA("mx1."+d, "127.0.0.1")
	}
	httpAddr := freePort(t)
	cfg := strings.NewReplacer("{{HTTP}}", httpAddr, "{{DNS}}", h.dns.Addr(), "{{MXPORT}}", h.mx.port()).Replace(trackingConfig)
	h.relay = newRelay(t, t.TempDir(), cfg)
	if err := os.WriteFile(filepath.Join(h.relay.dir, "track.key"), []byte("c2x1aWNlLXRyYWNraW5nLWUyZS1rZXktMzItYnl0ZXMhIQ==\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.base = "http://" + httpAddr
	h.client = &http.Client{Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	h.start()
	return h
}

// fetchTracking sends a request to the tracking host t.acme.test (the
// HTTP listener, by its Host header).
func (h *httpEnv) fetchTracking(method, rawURL, body string) *http.Response {
	h.t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil || u.Host != "t.acme.test" {
		h.t.Fatalf("tracking URL %q", rawURL)
	}
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, h.base+u.Path, rd)
	req.Host = u.Host
	req.Header.Set("User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0")
	if body != "" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := h.client.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func (h *httpEnv) delivered(n int) sinkMsg {
	h.t.Helper()
	waitFor(h.t, "delivery to the sink", func() bool { return h.mx.count() >= n })
	return h.mx.messages()[n-1]
}

var pixelRe = regexp.MustCompile(`<img src="(http://t\.acme\.test/t/o/[A-Za-z0-9_-]+)" width="1" height="1"`)

// TestTrackOpensHostedPayload: the exact payload of a hosted-API
// tutorial gets 202 (not 400 unknown_field), the delivered HTML carries
// the pixel, and fetching it produces one opened event.
func TestTrackOpensHostedPayload(t *testing.T) {
	h := newTrackingEnv(t)
	key, _ := h.createKey("acme", "send")
	payload := `{"to":"user@example.com","from":"system@myapp.com","subject":"Your Invoice","html":"<h1>Invoice #1234</h1>","track_opens":true}`
	r := h.do("POST", "/v1/messages", key, []byte(payload), nil)
	if r.status != http.StatusAccepted {
		t.Fatalf("POST: %s", r)
	}
	var ans httpPostAnswer
	_ = json.Unmarshal(r.body, &ans)
	msg := h.delivered(1)
	i := bytes.Index(msg.Data, []byte("\r\n\r\n"))
	body, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(msg.Data[i+4:])))
	if err != nil {
		t.Fatal(err)
	}
	m := pixelRe.FindSubmatch(body)
	if m == nil || !bytes.HasPrefix(body, []byte("<h1>Invoice #1234</h1><img ")) {
		t.Fatalf("no pixel after the HTML in the delivered message:\n%s", msg.Data)
	}
	for range 2 {
		if resp := h.fetchTracking("GET", string(m[1]), ""); resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/gif" {
			t.Fatalf("pixel: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	}
	evs := h.relay.waitEvents("an opened event", func(evs []pipeline.Event) bool { return countType(evs, pipeline.EventOpened, "user@example.com") >= 1 })
	if n := countType(evs, pipeline.EventOpened, "user@example.com"); n != 1 {
		t.Fatalf("%d opened events for two fetches, want 1:\n%s", n, describeEvents(evs))
	}
	for _, ev := range evs {
		if ev.Type == pipeline.EventOpened && (ev.MessageID != ans.ID || ev.Tenant != "acme" || ev.Engagement == nil || ev.Engagement.Machine) {
			t.Fatalf("opened event %+v (engagement %+v), message %s", ev, ev.Engagement, ans.ID)
		}
	}
	// Without the field (and no tenant default) nothing is tracked.
	r = h.do("POST", "/v1/messages", key, []byte(`{"to":"user@example.com","from":"system@myapp.com","subject":"x","html":"<h1>x</h1>"}`), nil)
	if r.status != http.StatusAccepted {
		t.Fatalf("POST: %s", r)
	}
	if msg := h.delivered(2); bytes.Contains(msg.Data, []byte("t.acme.test")) {
		t.Fatalf("an untracked message got tracking:\n%s", msg.Data)
	}
}

var unsubRe = regexp.MustCompile(`List-Unsubscribe: <(http://t\.acme\.test/t/u/[A-Za-z0-9_-]+)>`)

// TestOneClickUnsubscribe: list_unsubscribe adds the RFC 8058 fields; a
// POST of List-Unsubscribe=One-Click to the link suppresses the
// recipient, and the next submission to it is reported suppressed.
func TestOneClickUnsubscribe(t *testing.T) {
	h := newTrackingEnv(t)
	key, _ := h.createKey("acme", "send")
	payload := `{"to":"user@example.com","from":"news@myapp.com","subject":"News","html":"<p>Hi</p>","list_unsubscribe":true}`
	if r := h.do("POST", "/v1/messages", key, []byte(payload), nil); r.status != http.StatusAccepted {
		t.Fatalf("POST: %s", r)
	}
	msg := h.delivered(1)
	m := unsubRe.FindSubmatch(msg.Data)
	if m == nil || !bytes.Contains(msg.Data, []byte("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")) {
		t.Fatalf("no RFC 8058 fields:\n%s", msg.Data)
	}
	if resp := h.fetchTracking("POST", string(m[1]), "List-Unsubscribe=One-Click"); resp.StatusCode != 200 {
		t.Fatalf("one-click POST: %d", resp.StatusCode)
	}
	h.relay.waitEvents("an unsubscribed event", func(evs []pipeline.Event) bool {
		return countType(evs, pipeline.EventUnsubscribed, "user@example.com") == 1
	})
	r := h.do("POST", "/v1/messages", key, []byte(payload), nil)
	var ans httpPostAnswer
	_ = json.Unmarshal(r.body, &ans)
	if r.status != http.StatusUnprocessableEntity || len(ans.Recipients) != 1 || ans.Recipients[0].Status != "suppressed" {
		t.Fatalf("the next submission: %s, want the recipient reported suppressed", r)
	}
	// The tracking host serves nothing of the API.
	req, _ := http.NewRequest("GET", h.base+"/healthz", nil)
	req.Host = "t.acme.test"
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("/healthz on the tracking host: %d, want 404", resp.StatusCode)
	}
}

// TestTrackingKeyRotationReload: rotating the signing key with `sluice
// reload` (the old key kept in verify_keys) keeps the links of mail
// already sent working; once the old key is dropped they answer 404.
func TestTrackingKeyRotationReload(t *testing.T) {
	h := newTrackingEnv(t)
	key, _ := h.createKey("acme", "send")
	payload := `{"to":"user@example.com","from":"system@myapp.com","subject":"x","html":"<h1>x</h1>","track_opens":true}`
	if r := h.do("POST", "/v1/messages", key, []byte(payload), nil); r.status != http.StatusAccepted {
		t.Fatalf("POST: %s", r)
	}
	msg := h.delivered(1)
	i := bytes.Index(msg.Data, []byte("\r\n\r\n"))
	body, _ := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(msg.Data[i+4:])))
	m := pixelRe.FindSubmatch(body)
	if m == nil {
		t.Fatalf("no pixel:\n%s", msg.Data)
	}
	old := string(m[1])
	reload := func(from, to string) {
		t.Helper()
		b, _ := os.ReadFile(h.relay.cfg)
		if err := os.WriteFile(h.relay.cfg, []byte(strings.Replace(string(b), from, to, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, code := runBin(t, "reload", "-c", h.relay.cfg); code != 0 {
			t.Fatalf("sluice reload: exit %d, %q", code, out)
		}
	}
	if err := os.WriteFile(filepath.Join(h.relay.dir, "track2.key"), []byte("YW5vdGhlci10cmFja2luZy1rZXktb2YtMzItYnl0ZXMhIQ==\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	reload(`signing_key = "track.key",`, `signing_key = "track2.key", verify_keys = { "track.key" },`)
	if resp := h.fetchTracking("GET", old, ""); resp.StatusCode != 200 {
		t.Fatalf("the old link after the rotation: %d", resp.StatusCode)
	}
	reload(`verify_keys = { "track.key" },`, ``)
	if resp := h.fetchTracking("GET", old, ""); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("the old link after its key was dropped: %d", resp.StatusCode)
	}
}
