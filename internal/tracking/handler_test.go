package tracking

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

type env struct {
	t   testing.TB
	tr  *Tracker
	sp  *spool.Spool
	srv *httptest.Server
	now time.Time
}

const browserUA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"

func newEnv(t *testing.T, o Options) *env { return newEnvT(t, o) }

// newEnvB is newEnv for benchmarks.
func newEnvB(b *testing.B) *env { return newEnvT(b, Options{}) }

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }

func newEnvT(t testing.TB, o Options) *env {
	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	e := &env{t: t, sp: sp, now: sample.Accepted.Add(time.Hour)}
	e.tr = newTestTracker(t, o)
	e.tr.UseSpool(sp)
	e.tr.now = func() time.Time { return e.now }
	e.srv = httptest.NewServer(e.tr) // a real listener
	t.Cleanup(e.srv.Close)
	return e
}

func (e *env) link(kind byte, u string) string {
	l := sample
	l.Kind, l.URL = kind, u
	return "/t/" + string(kind) + "/" + e.tr.opts.Load().Keys.Sign(&l)
}

// do sends a request for path to the tracking host host (default
// t.acme.test), without following redirects.
func (e *env) do(method, host, path, ua, body string) *http.Response {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, e.srv.URL+path, rd)
	if host == "" {
		host = "t.acme.test"
	}
	req.Host = host
	if ua != "" {
		req.Header.Set("User-Agent", ua)
	} else {
		req.Header["User-Agent"] = nil
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func (e *env) events() []pipeline.Event {
	e.t.Helper()
	raw, err := e.sp.ReadOutbox(0, 1000)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []pipeline.Event
	for _, r := range raw {
		var ev pipeline.Event
		if err := json.Unmarshal(r.JSON, &ev); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

func TestOpenEvent(t *testing.T) {
	e := newEnv(t, Options{})
	p := e.link(KindOpen, "")
	for range 3 {
		resp := e.do("GET", "", p, browserUA, "")
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/gif" || resp.Header.Get("Cache-Control") != "no-store, private" {
			t.Fatalf("pixel: %d %v", resp.StatusCode, resp.Header)
		}
	}
	evs := e.events()
	if len(evs) != 1 {
		t.Fatalf("3 fetches gave %d events, want 1 (once per recipient)", len(evs))
	}
	ev := evs[0]
	if ev.Type != pipeline.EventOpened || ev.MessageID != sample.MessageID || ev.Recipient != sample.Recipient || ev.Tenant != "acme" ||
		ev.Source != SourceTracking || ev.Engagement == nil || ev.Engagement.Machine || ev.Engagement.UserAgent != pipeline.AgentBrowser {
		t.Fatalf("event %+v %+v", ev, ev.Engagement)
	}
	// A privacy proxy's fetch is a machine open of its own.
	e.do("GET", "", p, "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)", "")
	evs = e.events()
	if len(evs) != 2 || !evs[1].Engagement.Machine || evs[1].Engagement.MachineReason != ReasonProxy || evs[1].Engagement.UserAgent != pipeline.AgentProxy {
		t.Fatalf("proxy open: %+v", evs[len(evs)-1].Engagement)
	}
}

func TestEveryEvent(t *testing.T) {
	e := newEnv(t, Options{EveryEvent: true})
	p := e.link(KindOpen, "")
	e.do("GET", "", p, browserUA, "")
	e.do("GET", "", p, browserUA, "")
	if n := len(e.events()); n != 2 {
		t.Fatalf("events %d, want 2 with EveryEvent", n)
	}
}

// TestClickRedirect: a valid link redirects with 302 to exactly the
// original URL; tampered, truncated, re-signed with an unknown key, of
// another kind or on another tenant's host: 404, no Location.
func TestClickRedirect(t *testing.T) {
	e := newEnv(t, Options{Tenants: map[string]Policy{"acme": {BaseURL: testBase}, "globex": {BaseURL: "https://t.globex.test"}}})
	p := e.link(KindClick, sample.URL)
	resp := e.do("GET", "", p, browserUA, "")
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != sample.URL {
		t.Fatalf("click: %d Location %q, want 302 %q", resp.StatusCode, resp.Header.Get("Location"), sample.URL)
	}
	evs := e.events()
	if len(evs) != 1 || evs[0].Type != pipeline.EventClicked || evs[0].Engagement.URL != sample.URL || evs[0].Engagement.Machine {
		t.Fatalf("click events %+v", evs)
	}
	tok := p[len("/t/c/"):]
	flip := []byte(tok)
	flip[len(flip)/2] ^= 0x02
	evil := sample
	evil.URL = "https://evil.example/"
	unknown := testRing(t, testKey(t, "attacker"))
	for name, path := range map[string]string{
		"tampered":    "/t/c/" + string(flip),
		"truncated":   "/t/c/" + tok[:len(tok)-4],
		"unknown key": "/t/c/" + unknown.Sign(&evil),
		"other kind":  "/t/u/" + tok,
		"no token":    "/t/c/",
		"other path":  "/v1/messages",
	} {
		resp := e.do("GET", "", path, browserUA, "")
		if resp.StatusCode != http.StatusNotFound || resp.Header.Get("Location") != "" {
			t.Errorf("%s: %d Location %q, want 404 and no redirect", name, resp.StatusCode, resp.Header.Get("Location"))
		}
	}
	if resp := e.do("GET", "t.globex.test", p, browserUA, ""); resp.StatusCode != http.StatusNotFound {
		t.Errorf("acme's link on globex's host: %d, want 404", resp.StatusCode)
	}
	if resp := e.do("GET", "T.ACME.TEST:443", p, browserUA, ""); resp.StatusCode != http.StatusFound {
		t.Errorf("host with a port and in upper case: %d", resp.StatusCode)
	}
	if n := len(e.events()); n != 1 {
		t.Fatalf("refused requests made events: %d", n)
	}
}

// TestKeyRotationEndpoint: after a reload that rotates the signing key
// (old key kept for verification), a link signed before still redirects.
func TestKeyRotationEndpoint(t *testing.T) {
	old := testKey(t, "old")
	e := newEnv(t, Options{Keys: testRing(t, old)})
	p := e.link(KindClick, sample.URL)
	if err := e.tr.Configure(Options{Keys: testRing(t, testKey(t, "new"), old), Tenants: map[string]Policy{"acme": {BaseURL: testBase}}}); err != nil {
		t.Fatal(err)
	}
	if resp := e.do("GET", "", p, browserUA, ""); resp.StatusCode != http.StatusFound {
		t.Fatalf("old link after rotation: %d", resp.StatusCode)
	}
	if err := e.tr.Configure(Options{Keys: testRing(t, testKey(t, "new")), Tenants: map[string]Policy{"acme": {BaseURL: testBase}}}); err != nil {
		t.Fatal(err)
	}
	if resp := e.do("GET", "", p, browserUA, ""); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("old link after its key was dropped: %d", resp.StatusCode)
	}
}

// TestMachineClicks: scanner-style clicks are flagged machine with the
// reason: within seconds of delivery, a HEAD request, a known scanner or
// proxy user agent, no user agent.
func TestMachineClicks(t *testing.T) {
	for _, tt := range []struct {
		name, method, ua string
		after            time.Duration
		reason, class    string
	}{
		{"too soon", "GET", browserUA, 2 * time.Second, ReasonTooSoon, pipeline.AgentBrowser},
		{"head", "HEAD", browserUA, time.Hour, ReasonHead, pipeline.AgentBrowser},
		{"scanner", "GET", "Mozilla/5.0 (compatible; Barracuda Sentinel)", time.Hour, ReasonScanner, pipeline.AgentScanner},
		{"proxy", "GET", "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html", time.Hour, ReasonProxy, pipeline.AgentProxy},
		{"bot", "GET", "python-requests/2.31", time.Hour, ReasonBot, pipeline.AgentBot},
		{"no agent", "GET", "", time.Hour, ReasonNoUserAgent, pipeline.AgentUnknown},
		{"human", "GET", browserUA, time.Minute, "", pipeline.AgentBrowser},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, Options{})
			e.now = sample.Accepted.Add(tt.after)
			resp := e.do(tt.method, "", e.link(KindClick, sample.URL), tt.ua, "")
			if resp.StatusCode != http.StatusFound {
				t.Fatalf("status %d", resp.StatusCode)
			}
			evs := e.events()
			if len(evs) != 1 {
				t.Fatalf("%d events", len(evs))
			}
			g := evs[0].Engagement
			if g.Machine != (tt.reason != "") || g.MachineReason != tt.reason || g.UserAgent != tt.class {
				t.Fatalf("engagement %+v, want reason %q class %q", g, tt.reason, tt.class)
			}
		})
	}
}

// TestUnsubscribe: GET shows a confirmation page and changes nothing; an
// RFC 8058 one-click POST suppresses the recipient for the tenant, with
// suppression_added and unsubscribed events, once; a POST without the
// one-click body is 400.
func TestUnsubscribe(t *testing.T) {
	e := newEnv(t, Options{})
	e.sp.SetSuppressionPolicy(spool.SuppressionPolicy{Enabled: true})
	p := e.link(KindUnsubscribe, "")
	resp := e.do("GET", "", p, browserUA, "")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("page: %d", resp.StatusCode)
	}
	if s, _ := e.sp.Suppressed("acme", sample.Recipient); s != nil || len(e.events()) != 0 {
		t.Fatal("a GET unsubscribed")
	}
	if resp := e.do("POST", "", p, browserUA, "hello=1"); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("junk POST: %d", resp.StatusCode)
	}
	form := url.Values{"List-Unsubscribe": {"One-Click"}}.Encode()
	if resp := e.do("POST", "", p, "Google-Unsubscribe", form); resp.StatusCode != 200 {
		t.Fatalf("one-click: %d", resp.StatusCode)
	}
	s, err := e.sp.Suppressed("acme", sample.Recipient)
	if err != nil || s == nil || s.Source != spool.SuppressionUnsubscribe || s.MessageID != sample.MessageID {
		t.Fatalf("suppression %+v %v", s, err)
	}
	evs := e.events()
	if len(evs) != 2 || evs[0].Type != pipeline.EventSuppressionAdded || evs[1].Type != pipeline.EventUnsubscribed ||
		evs[1].Engagement.Method != "one-click" || evs[1].Recipient != sample.Recipient || evs[1].Engagement.Machine {
		t.Fatalf("events %+v", evs)
	}
	// Again, and from the page: already listed, nothing new.
	e.do("POST", "", p, browserUA, "confirm=yes")
	if n := len(e.events()); n != 2 {
		t.Fatalf("a second unsubscribe made events: %d", n)
	}
}

// TestDefaultHost: tenants without a policy of their own share the
// default tracking host; a listed tenant's links are not served there.
func TestDefaultHost(t *testing.T) {
	e := newEnv(t, Options{Default: Policy{BaseURL: "https://t.relay.test"}, Tenants: map[string]Policy{"globex": {BaseURL: "https://t.globex.test"}}})
	kr := e.tr.opts.Load().Keys
	sign := func(tenant string) string {
		l := sample
		l.Tenant = tenant
		return "/t/c/" + kr.Sign(&l)
	}
	if resp := e.do("GET", "t.relay.test", sign("acme"), browserUA, ""); resp.StatusCode != http.StatusFound {
		t.Fatalf("an unlisted tenant on the default host: %d", resp.StatusCode)
	}
	if resp := e.do("GET", "t.relay.test", sign("globex"), browserUA, ""); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("a listed tenant's link on the default host: %d", resp.StatusCode)
	}
	if resp := e.do("GET", "t.globex.test", sign("globex"), browserUA, ""); resp.StatusCode != http.StatusFound {
		t.Fatalf("globex on its host: %d", resp.StatusCode)
	}
}
