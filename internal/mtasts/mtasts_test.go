package mtasts_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/internal/mtasts"
	"github.com/sluice-mta/sluice/internal/mtasts/ststest"
	"github.com/sluice-mta/sluice/internal/testutil"
)

const enforce = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\nmx: *.mx.example.test\r\nmax_age: 86400\r\n"

func TestParse(t *testing.T) {
	p, err := mtasts.Parse([]byte(enforce))
	if err != nil {
		t.Fatal(err)
	}
	if p.Mode != mtasts.ModeEnforce || p.MaxAge != 86400*time.Second || len(p.MX) != 2 {
		t.Fatalf("got %+v", p)
	}
	bad := map[string]string{
		"version": "version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n",
		"mode":    "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",
		"max_age": "version: STSv1\nmode: enforce\nmx: a\nmax_age: -1\n",
		"no mx":   "version: STSv1\nmode: enforce\nmax_age: 1\n",
		"colon":   "version: STSv1\ngarbage\n",
	}
	for field, body := range bad {
		if _, err := mtasts.Parse([]byte(body)); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: err %v, want one naming %q", field, err, field)
		}
	}
	if p, err := mtasts.Parse([]byte("version: STSv1\nmode: none\nmax_age: 99999999999\n")); err == nil {
		t.Errorf("11-digit max_age accepted: %+v", p)
	}
	if p, err := mtasts.Parse([]byte("version: STSv1\nmode: none\nmax_age: 999999999\n")); err != nil || p.MaxAge != mtasts.MaxMaxAge {
		t.Errorf("max_age not capped: %+v %v", p, err)
	}
}

func TestMatch(t *testing.T) {
	p, _ := mtasts.Parse([]byte(enforce))
	for host, want := range map[string]bool{
		"mx1.example.test":     true,
		"MX1.Example.Test.":    true,
		"a.mx.example.test":    true,
		"a.b.mx.example.test":  false,
		"mx.example.test":      false,
		"mx2.example.test":     false,
		"evilmx1.example.test": false,
	} {
		if got := p.Match(host); got != want {
			t.Errorf("Match(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestParseTXT(t *testing.T) {
	if id, err := mtasts.ParseTXT("v=STSv1; id=20160831085700Z;"); err != nil || id != "20160831085700Z" {
		t.Fatalf("got %q %v", id, err)
	}
	for _, txt := range []string{"v=STSv2; id=1", "v=STSv1;", "v=STSv1; id=a-b", "v=STSv1; id=" + strings.Repeat("a", 33)} {
		if _, err := mtasts.ParseTXT(txt); err == nil {
			t.Errorf("%q accepted", txt)
		}
	}
}

type env struct {
	dns   *dnstest.Server
	https *ststest.Server
	cache *mtasts.Cache
	now   time.Time
}

func newEnv(t *testing.T, body string) *env {
	e := &env{dns: dnstest.NewServer(t), now: time.Now()}
	e.https = ststest.StartServer(t, body, "mta-sts.example.test")
	r, err := dnsx.New(dnsx.Options{Server: e.dns.Addr(), CacheSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	e.cache = &mtasts.Cache{Resolver: r, RootCAs: e.https.Cert.Pool, DialContext: e.https.Dial,
		Now: func() time.Time { return e.now }}
	return e
}

func TestGetCachesAndRefreshes(t *testing.T) {
	e := newEnv(t, enforce)
	ctx := context.Background()
	if p, err := e.cache.Get(ctx, "example.test"); p != nil || err != nil {
		t.Fatalf("no TXT record: got %+v %v, want no policy", p, err)
	}
	e.dns.AddTXT("_mta-sts.example.test", "v=STSv1; id=one")
	p, err := e.cache.Get(ctx, "example.test")
	if err != nil || p == nil || p.Mode != mtasts.ModeEnforce || p.ID != "one" {
		t.Fatalf("got %+v %v", p, err)
	}
	if p, err := e.cache.Get(ctx, "Example.Test."); err != nil || p == nil || e.https.Hits() != 1 {
		t.Fatalf("cached lookup fetched again: hits %d, %+v %v", e.https.Hits(), p, err)
	}
	// The id changes: refetch.
	e.dns.Remove("_mta-sts.example.test")
	e.dns.AddTXT("_mta-sts.example.test", "v=STSv1; id=two")
	e.https.Set(strings.Replace(enforce, "enforce", "testing", 1), 200)
	if p, err := e.cache.Get(ctx, "example.test"); err != nil || p.Mode != mtasts.ModeTesting || e.https.Hits() != 2 {
		t.Fatalf("after id change: hits %d, %+v %v", e.https.Hits(), p, err)
	}
	// The id changes again but the fetch fails: the cached policy stays
	// (RFC 8461 section 5.1), and the error says why.
	e.dns.Remove("_mta-sts.example.test")
	e.dns.AddTXT("_mta-sts.example.test", "v=STSv1; id=three")
	e.https.Set("", 500)
	if p, err := e.cache.Get(ctx, "example.test"); err == nil || p == nil || p.Mode != mtasts.ModeTesting || p.ID != "two" {
		t.Fatalf("stale policy not kept: %+v %v", p, err)
	}
	// The TXT record disappears: the cached policy still applies until it expires.
	e.dns.Remove("_mta-sts.example.test")
	if p, _ := e.cache.Get(ctx, "example.test"); p == nil {
		t.Fatal("cached policy dropped when the TXT record went away")
	}
	e.now = e.now.Add(86401 * time.Second)
	if p, err := e.cache.Get(ctx, "example.test"); p != nil || err != nil {
		t.Fatalf("expired policy used: %+v %v", p, err)
	}
}

func TestFetchFailures(t *testing.T) {
	ctx := context.Background()
	for name, tc := range map[string]struct {
		body   string
		status int
		names  []string
		want   string
	}{
		"wrong certificate name": {enforce, 200, []string{"other.example.test"}, "certificate"},
		"redirect":               {enforce, 302, nil, "status 302"},
		"not found":              {enforce, 404, nil, "status 404"},
		"too large":              {enforce + strings.Repeat("x: y\n", mtasts.MaxBody/5+1), 200, nil, "larger than"},
		"bad policy":             {"version: STSv1\n", 200, nil, "mode"},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, tc.body)
			if tc.names != nil {
				e.https = ststest.StartServer(t, tc.body, tc.names...)
				e.cache.RootCAs, e.cache.DialContext = e.https.Cert.Pool, e.https.Dial
			}
			e.https.Set(tc.body, tc.status)
			e.dns.AddTXT("_mta-sts.example.test", "v=STSv1; id=one")
			p, err := e.cache.Get(ctx, "example.test")
			if p != nil || err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %+v, err %v; want no policy and an error with %q", p, err, tc.want)
			}
		})
	}
}

// TestFailedFetchRemembered: a failed fetch is remembered for FailureTTL
// (no TXT lookup, no HTTPS request, the same error), with or without a
// cached policy in force, and forgotten after it or on a success.
func TestFailedFetchRemembered(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "garbage")
	e.dns.AddTXT("_mta-sts.example.test", "v=STSv1; id=one")
	p, err := e.cache.Get(ctx, "example.test")
	if p != nil || err == nil || e.https.Hits() != 1 {
		t.Fatalf("got %+v %v, hits %d; want no policy, an error, one fetch", p, err, e.https.Hits())
	}
	queries := e.dns.Queries()
	for range 3 {
		p2, err2 := e.cache.Get(ctx, "Example.Test.")
		if p2 != nil || err2 != err {
			t.Fatalf("within FailureTTL: got %+v %v, want the remembered error %v", p2, err2, err)
		}
	}
	if e.https.Hits() != 1 || e.dns.Queries() != queries {
		t.Fatalf("within FailureTTL: %d fetches, %d TXT lookups; want 1 and none", e.https.Hits(), e.dns.Queries()-queries)
	}
	// FailureTTL passes: fetch again (still failing), then once fixed,
	// after another FailureTTL, the policy is fetched and cached.
	e.now = e.now.Add(mtasts.DefaultFailureTTL)
	if p, err := e.cache.Get(ctx, "example.test"); p != nil || err == nil || e.https.Hits() != 2 {
		t.Fatalf("after FailureTTL: got %+v %v, hits %d; want a second failed fetch", p, err, e.https.Hits())
	}
	e.https.Set(enforce, 200)
	if _, err := e.cache.Get(ctx, "example.test"); err == nil || e.https.Hits() != 2 {
		t.Fatalf("fixed server fetched within FailureTTL: %v, hits %d", err, e.https.Hits())
	}
	e.now = e.now.Add(mtasts.DefaultFailureTTL)
	if p, err := e.cache.Get(ctx, "example.test"); p == nil || err != nil || e.https.Hits() != 3 {
		t.Fatalf("after the fix: got %+v %v, hits %d", p, err, e.https.Hits())
	}
	// A cached policy in force, a new id, a failed refresh: the policy
	// stays (RFC 8461 section 5.1) with the error, remembered too.
	e.dns.Remove("_mta-sts.example.test")
	e.dns.AddTXT("_mta-sts.example.test", "v=STSv1; id=two")
	e.https.Set("", 500)
	for i := range 3 {
		if p, err := e.cache.Get(ctx, "example.test"); p == nil || p.ID != "one" || err == nil || !strings.Contains(err.Error(), "status 500") {
			t.Fatalf("Get %d after a failed refresh: got %+v %v, want policy one and the error", i, p, err)
		}
	}
	if e.https.Hits() != 4 {
		t.Fatalf("failed refresh: %d fetches, want 4", e.https.Hits())
	}
	// A negative FailureTTL turns the negative cache off.
	e = newEnv(t, "garbage")
	e.cache.FailureTTL = -1
	e.dns.AddTXT("_mta-sts.example.test", "v=STSv1; id=one")
	for range 2 {
		if _, err := e.cache.Get(ctx, "example.test"); err == nil {
			t.Fatal("no error from a failed fetch")
		}
	}
	if e.https.Hits() != 2 {
		t.Fatalf("FailureTTL -1: %d fetches, want 2", e.https.Hits())
	}
}

func TestMaxEntries(t *testing.T) {
	e := newEnv(t, enforce)
	e.cache.MaxEntries = 2
	e.https = ststest.StartServer(t, enforce, "mta-sts.a.test", "mta-sts.b.test", "mta-sts.c.test")
	e.cache.RootCAs, e.cache.DialContext = e.https.Cert.Pool, e.https.Dial
	for _, d := range []string{"a.test", "b.test", "c.test"} {
		e.dns.AddTXT("_mta-sts."+d, "v=STSv1; id=one")
		if p, err := e.cache.Get(context.Background(), d); p == nil || err != nil {
			t.Fatalf("%s: %+v %v", d, p, err)
		}
	}
	if n := e.cache.Len(); n != 2 {
		t.Fatalf("cache holds %d, want 2", n)
	}
}

// BenchmarkGetCached is the cost Dial pays per connection for a domain
// whose policy is cached: a TXT lookup answered by dnsx's cache and a map
// read.
func BenchmarkGetCached(b *testing.B) {
	dns := dnstest.NewServer(b)
	https := ststest.StartServer(b, enforce, "mta-sts.example.test")
	r, err := dnsx.New(dnsx.Options{Server: dns.Addr()})
	if err != nil {
		b.Fatal(err)
	}
	dns.SetTTL(3600)
	dns.AddTXT("_mta-sts.example.test", "v=STSv1; id=one")
	c := &mtasts.Cache{Resolver: r, RootCAs: https.Cert.Pool, DialContext: https.Dial}
	ctx := context.Background()
	if p, err := c.Get(ctx, "example.test"); p == nil || err != nil {
		b.Fatal(p, err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if p, _ := c.Get(ctx, "example.test"); p == nil {
			b.Fatal("no policy")
		}
	}
	if https.Hits() != 1 {
		b.Fatalf("fetched %d times", https.Hits())
	}
}

// TestConcurrentGets runs Gets for one domain at once (run it with -race):
// each gets the policy, and afterwards it is cached.
func TestConcurrentGets(t *testing.T) {
	e := newEnv(t, enforce)
	e.dns.AddTXT("_mta-sts.example.test", "v=STSv1; id=one")
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if p, err := e.cache.Get(context.Background(), "example.test"); p == nil || err != nil {
				t.Errorf("Get = %+v, %v", p, err)
			}
		}()
	}
	wg.Wait()
	hits := e.https.Hits()
	if p, _ := e.cache.Get(context.Background(), "example.test"); p == nil || e.https.Hits() != hits {
		t.Fatalf("policy not cached after concurrent Gets: hits %d, then %d", hits, e.https.Hits())
	}
}

// TestColdGetsShareOneFetch: Gets for one domain with nothing cached, all
// at once (the DNS server holds the TXT query until every Get has joined),
// make one TXT query and one HTTPS fetch; a Get whose ctx is cancelled
// meanwhile returns its ctx error without failing the others.
func TestColdGetsShareOneFetch(t *testing.T) {
	e := newEnv(t, enforce)
	e.dns.AddTXT("_mta-sts.example.test", "v=STSv1; id=one")
	release := e.dns.Hold()
	const n = 8
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if p, err := e.cache.Get(context.Background(), "example.test"); p == nil || err != nil || p.ID != "one" {
				t.Errorf("Get = %+v, %v", p, err)
			}
		}()
	}
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error, 1)
	go func() {
		p, err := e.cache.Get(ctx, "example.test")
		if p != nil {
			t.Errorf("cancelled Get returned a policy: %+v", p)
		}
		gaveUp <- err
	}()
	// A generous bound on an asynchronous outcome, not a speed assertion.
	for deadline := time.Now().Add(30 * time.Second); e.cache.Waiting("example.test") != n+1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the Gets did not all join one query in flight")
		}
	}
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Get: err %v, want context.Canceled", err)
	}
	release()
	wg.Wait()
	if q, h := e.dns.Queries(), e.https.Hits(); q != 1 || h != 1 {
		t.Fatalf("%d TXT queries and %d fetches, want 1 and 1", q, h)
	}
}

// TestFetchUsesResolver: without DialContext the policy host's address
// comes from the Cache's Resolver (the loopback DNS server here, which the
// system resolver knows nothing of), on port 443 of a random loopback
// address.
func TestFetchUsesResolver(t *testing.T) {
	ip := fmt.Sprintf("127.%d.%d.%d", 1+rand.IntN(250), 1+rand.IntN(250), 1+rand.IntN(250))
	ln, err := net.Listen("tcp", ip+":443")
	if err != nil {
		t.Skipf("needs %s:443: %v", ip, err)
	}
	cert := testutil.SelfSignedCert(t, "mta-sts.example.test")
	var hits atomic.Int64
	srv := &http.Server{TLSConfig: cert.TLS, ErrorLog: log.New(io.Discard, "", 0),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, enforce)
		})}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })

	dns := dnstest.NewServer(t)
	dns.AddTXT("_mta-sts.example.test", "v=STSv1; id=one")
	dns.AddA("mta-sts.example.test", ip)
	r, err := dnsx.New(dnsx.Options{Server: dns.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	c := &mtasts.Cache{Resolver: r, RootCAs: cert.Pool}
	if p, err := c.Get(context.Background(), "example.test"); p == nil || err != nil || p.Mode != mtasts.ModeEnforce || hits.Load() != 1 {
		t.Fatalf("Get = %+v, %v (server hits %d)", p, err, hits.Load())
	}
}
