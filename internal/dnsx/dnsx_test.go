package dnsx_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
)

func newClient(t *testing.T, s *dnstest.Server, opts dnsx.Options) *dnsx.Client {
	t.Helper()
	opts.Server = s.Addr()
	if opts.Timeout == 0 {
		opts.Timeout = 2 * time.Second
	}
	c, err := dnsx.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// outcome names what a lookup is expected to return.
type outcome string

const (
	records   outcome = "records"
	notFound  outcome = "NXDOMAIN"
	noData    outcome = "NODATA"
	temporary outcome = "temporary"
	invalid   outcome = "invalid name"
)

// wantOutcome checks that err is exactly the outcome want, and that every
// classifier agrees.
func wantOutcome(t *testing.T, err error, want outcome) {
	t.Helper()
	got := records
	switch {
	case err == nil:
	case errors.Is(err, dnsx.ErrNotFound):
		got = notFound
	case errors.Is(err, dnsx.ErrNoData):
		got = noData
	case errors.Is(err, dnsx.ErrInvalidName):
		got = invalid
	case dnsx.IsTemporary(err):
		got = temporary
	default:
		t.Fatalf("err = %v (%T) is no DNS outcome, want %s", err, err, want)
	}
	if got != want {
		t.Fatalf("outcome %s (err %v), want %s", got, err, want)
	}
	if dnsx.IsNotFound(err) != (want == notFound) || dnsx.IsNoData(err) != (want == noData) ||
		dnsx.IsTemporary(err) != (want == temporary) {
		t.Fatalf("classifiers disagree on %v", err)
	}
	if want == temporary {
		var te *dnsx.TemporaryError
		if !errors.As(err, &te) || !te.Temporary() || te.Reason == "" || te.Name == "" || te.Type == "" {
			t.Fatalf("temporary error %#v lacks its details", te)
		}
		if strings.HasPrefix(te.Name, ".") || strings.HasSuffix(te.Name, ".") {
			t.Fatalf("TemporaryError.Name = %q", te.Name)
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && want != temporary {
		t.Fatalf("%v is a net.Error but not temporary", err)
	}
}

func TestLookupMX(t *testing.T) {
	s := dnstest.NewServer(t)
	s.SetTTL(300)
	s.AddMX("example.org", 20, "MX2.example.org")
	s.SetTTL(120)
	s.AddMX("example.org", 10, "mx1.example.org.")
	s.AddA("plain.example", "192.0.2.7")
	s.SetNullMX("null.example")
	s.AddA("null.example", "192.0.2.8")
	s.SetServfail("broken.example")
	s.AddA("host.deep.example", "192.0.2.9")
	s.SetTTL(30)
	s.AddCNAME("alias.example", "example.org")
	s.AddCNAME("dangling.example", "nope.example")
	s.AddCNAME("loop1.example", "loop2.example")
	s.AddCNAME("loop2.example", "loop1.example")

	c := newClient(t, s, dnsx.Options{CacheSize: -1})
	ctx := context.Background()

	tests := []struct {
		name   string
		domain string
		want   []dnsx.MX
		ttl    time.Duration
		null   bool
		out    outcome
	}{
		{name: "records, TTL is the smallest", domain: "example.org", want: []dnsx.MX{{"mx2.example.org", 20}, {"mx1.example.org", 10}}, ttl: 120 * time.Second},
		{name: "trailing dot and case", domain: "EXAMPLE.org.", want: []dnsx.MX{{"mx2.example.org", 20}, {"mx1.example.org", 10}}, ttl: 120 * time.Second},
		{name: "through a CNAME, whose TTL counts", domain: "alias.example", want: []dnsx.MX{{"mx2.example.org", 20}, {"mx1.example.org", 10}}, ttl: 30 * time.Second},
		{name: "NODATA: no MX but an A", domain: "plain.example", out: noData},
		{name: "NODATA: empty non-terminal", domain: "deep.example", out: noData},
		{name: "null MX is a record", domain: "null.example", want: []dnsx.MX{{".", 0}}, null: true, ttl: 120 * time.Second},
		{name: "NXDOMAIN", domain: "nope.example", out: notFound},
		{name: "NXDOMAIN at the end of a CNAME", domain: "dangling.example", out: notFound},
		{name: "CNAME loop is NODATA", domain: "loop1.example", out: noData},
		{name: "SERVFAIL", domain: "broken.example", out: temporary},
		{name: "invalid name", domain: "bad..example", out: invalid},
		{name: "empty name", domain: "", out: invalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.out == "" {
				tt.out = records
			}
			got, err := c.LookupMX(ctx, tt.domain)
			wantOutcome(t, err, tt.out)
			if err != nil {
				if got.Records != nil || got.TTL != 0 {
					t.Fatalf("error %v came with a result %+v", err, got)
				}
				return
			}
			if !slices.Equal(got.Records, tt.want) || got.TTL != tt.ttl {
				t.Fatalf("LookupMX = %v TTL %v, want %v TTL %v", got.Records, got.TTL, tt.want, tt.ttl)
			}
			if dnsx.IsNullMX(got.Records) != tt.null {
				t.Fatalf("IsNullMX(%v) = %v", got.Records, !tt.null)
			}
		})
	}
}

func TestLookupHost(t *testing.T) {
	s := dnstest.NewServer(t)
	s.SetTTL(60)
	s.AddA("mx.example.org", "192.0.2.1")
	s.SetTTL(40)
	s.AddA("mx.example.org", "2001:db8::1")
	s.SetTTL(60)
	s.AddA("mx.example.org", "192.0.2.2")
	s.AddMX("v6only.example", 10, "mx.example.org")
	s.AddAAAA("v6.example", "2001:db8::2")
	s.SetServfail("broken.example")
	s.AddCNAME("www.example", "mx.example.org")
	// 100 addresses do not fit in 1232 bytes: the UDP answer is truncated
	// and the client must retry over TCP.
	var many []netip.Addr
	for i := 0; i < 100; i++ {
		ip := netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
		many = append(many, ip)
		s.AddA("big.example", ip.String())
	}
	c := newClient(t, s, dnsx.Options{CacheSize: -1})
	ctx := context.Background()

	tests := []struct {
		name string
		host string
		want []netip.Addr
		ttl  time.Duration
		out  outcome
	}{
		{name: "A then AAAA, smaller TTL", host: "mx.example.org", want: addrs("192.0.2.1", "192.0.2.2", "2001:db8::1"), ttl: 40 * time.Second},
		{name: "AAAA only", host: "v6.example", want: addrs("2001:db8::2"), ttl: 60 * time.Second},
		{name: "through a CNAME", host: "www.example", want: addrs("192.0.2.1", "192.0.2.2", "2001:db8::1"), ttl: 40 * time.Second},
		{name: "IPv4 literal", host: "192.0.2.55", want: addrs("192.0.2.55")},
		{name: "IPv6 literal in brackets", host: "[2001:db8::5]", want: addrs("2001:db8::5")},
		{name: "NODATA: exists without addresses", host: "v6only.example", out: noData},
		{name: "truncated answer retried over TCP", host: "big.example", want: many, ttl: 60 * time.Second},
		{name: "NXDOMAIN", host: "nope.example", out: notFound},
		{name: "SERVFAIL", host: "broken.example", out: temporary},
		{name: "invalid name", host: strings.Repeat("a", 64) + ".example", out: invalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.out == "" {
				tt.out = records
			}
			got, err := c.LookupHost(ctx, tt.host)
			wantOutcome(t, err, tt.out)
			if err != nil {
				return
			}
			if !slices.Equal(got.Records, tt.want) || got.TTL != tt.ttl {
				t.Fatalf("LookupHost = %v TTL %v, want %v TTL %v", got.Records, got.TTL, tt.want, tt.ttl)
			}
		})
	}
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestLookupTXT(t *testing.T) {
	s := dnstest.NewServer(t)
	s.SetTTL(300)
	s.AddTXT("example.org", "v=spf1 ip4:192.0.2.0/24 ", "include:_spf.example.net -all")
	s.AddTXT("example.org", "google-site-verification=abc")
	s.SetTTL(100)
	s.AddTXT("_dmarc.example.org", "v=DMARC1; p=reject")
	long := strings.Repeat("k", 255)
	s.AddTXT("s1._domainkey.example.org", "v=DKIM1; p=", long, long, "tail")
	s.AddTXT("raw.example", `quote " backslash \ `, "\x00\x01\xff \\032", "")
	s.AddTXT("empty.example")
	s.AddMX("nospf.example", 10, "mx.example.org")
	s.SetServfail("broken.example")
	s.SetTimeout("slow.example")
	c := newClient(t, s, dnsx.Options{Timeout: 100 * time.Millisecond, Attempts: 1, CacheSize: -1})
	ctx := context.Background()

	tests := []struct {
		name string
		want []string
		ttl  time.Duration
		out  outcome
	}{
		{name: "example.org", want: []string{"v=spf1 ip4:192.0.2.0/24 include:_spf.example.net -all", "google-site-verification=abc"}, ttl: 300 * time.Second},
		{name: "_dmarc.example.org", want: []string{"v=DMARC1; p=reject"}, ttl: 100 * time.Second},
		{name: "s1._domainkey.example.org", want: []string{"v=DKIM1; p=" + long + long + "tail"}, ttl: 100 * time.Second},
		{name: "raw.example", want: []string{`quote " backslash \ ` + "\x00\x01\xff \\032"}, ttl: 100 * time.Second},
		{name: "empty.example", want: []string{""}, ttl: 100 * time.Second},
		{name: "nospf.example", out: noData},
		{name: "_dmarc.nospf.example", out: notFound},
		{name: "broken.example", out: temporary},
		{name: "slow.example", out: temporary},
		{name: "a..b", out: invalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.out == "" {
				tt.out = records
			}
			got, err := c.LookupTXT(ctx, tt.name)
			wantOutcome(t, err, tt.out)
			if err != nil {
				return
			}
			if !slices.Equal(got.Records, tt.want) || got.TTL != tt.ttl {
				t.Fatalf("LookupTXT = %q TTL %v, want %q TTL %v", got.Records, got.TTL, tt.want, tt.ttl)
			}
		})
	}
}

func TestTemporaryNetworkFailures(t *testing.T) {
	t.Run("timeout", func(t *testing.T) {
		s := dnstest.NewServer(t)
		s.SetTimeout("slow.example")
		c := newClient(t, s, dnsx.Options{Timeout: 100 * time.Millisecond, Attempts: 2})
		start := time.Now()
		_, err := c.LookupMX(context.Background(), "slow.example")
		wantOutcome(t, err, temporary)
		var te *dnsx.TemporaryError
		if !errors.As(err, &te) || !te.Timeout() || te.Reason != "timeout" || te.Name != "slow.example" || te.Type != "MX" || te.Server != s.Addr() {
			t.Fatalf("err = %#v, want a timeout for slow.example MX via %s", te, s.Addr())
		}
		if d := time.Since(start); d < 200*time.Millisecond {
			t.Fatalf("gave up after %v, want two 100ms attempts", d)
		}
		if s.Queries() != 2 {
			t.Fatalf("server saw %d queries, want 2 attempts", s.Queries())
		}
		// A temporary failure is not cached.
		_, err = c.LookupMX(context.Background(), "slow.example")
		wantOutcome(t, err, temporary)
		if s.Queries() != 4 {
			t.Fatalf("server saw %d queries, want 4: failures must not be cached", s.Queries())
		}
	})
	t.Run("context deadline", func(t *testing.T) {
		s := dnstest.NewServer(t)
		s.SetTimeout("slow.example")
		c := newClient(t, s, dnsx.Options{Timeout: 10 * time.Second})
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := c.LookupHost(ctx, "slow.example")
		wantOutcome(t, err, temporary)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want it to wrap context.DeadlineExceeded", err)
		}
	})
	t.Run("context cancelled", func(t *testing.T) {
		s := dnstest.NewServer(t)
		s.AddTXT("example.org", "x")
		c := newClient(t, s, dnsx.Options{})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := c.LookupTXT(ctx, "example.org")
		wantOutcome(t, err, temporary)
		var te *dnsx.TemporaryError
		if errors.As(err, &te); te.Reason != "cancelled" || !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want a cancelled lookup", err)
		}
	})
	t.Run("nobody listening", func(t *testing.T) {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := pc.LocalAddr().String()
		pc.Close()
		c, err := dnsx.New(dnsx.Options{Server: addr, Timeout: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.LookupMX(context.Background(), "example.org")
		wantOutcome(t, err, temporary)
	})
}

func TestIDN(t *testing.T) {
	s := dnstest.NewServer(t)
	s.AddMX("xn--bcher-kva.example", 5, "mx.xn--bcher-kva.example")
	s.AddA("mx.xn--bcher-kva.example", "192.0.2.3")
	c := newClient(t, s, dnsx.Options{})
	mxs, err := c.LookupMX(context.Background(), "Bücher.example")
	if err != nil {
		t.Fatal(err)
	}
	if want := []dnsx.MX{{"mx.xn--bcher-kva.example", 5}}; !slices.Equal(mxs.Records, want) {
		t.Fatalf("LookupMX = %v, want %v", mxs.Records, want)
	}
	ips, err := c.LookupHost(context.Background(), "mx.bücher.example")
	if err != nil || len(ips.Records) != 1 {
		t.Fatalf("LookupHost = %v, %v", ips, err)
	}
}

func TestCache(t *testing.T) {
	s := dnstest.NewServer(t)
	s.SetTTL(60)
	s.AddMX("cached.example", 10, "mx.cached.example")
	s.AddA("mx.cached.example", "192.0.2.4")
	s.SetTTL(0)
	s.AddMX("uncached.example", 10, "mx.cached.example")

	var mu sync.Mutex
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	c := newClient(t, s, dnsx.Options{Now: clock})
	ctx := context.Background()

	lookups := func() {
		t.Helper()
		if _, err := c.LookupMX(ctx, "cached.example"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.LookupHost(ctx, "mx.cached.example"); err != nil {
			t.Fatal(err)
		}
	}
	lookups()
	first := s.Queries() // MX + A + AAAA
	if first != 3 {
		t.Fatalf("first lookups sent %d queries, want 3", first)
	}
	lookups()
	// AAAA had no records, so it is not cached: one more query.
	if got := s.Queries() - first; got != 1 {
		t.Fatalf("cached lookups sent %d queries, want 1 (the empty AAAA)", got)
	}
	// Mutating a returned slice must not poison the cache.
	mxs, _ := c.LookupMX(ctx, "cached.example")
	mxs.Records[0].Host = "evil.example"
	mxs, _ = c.LookupMX(ctx, "cached.example")
	if mxs.Records[0].Host != "mx.cached.example" {
		t.Fatalf("cache returned %v after caller mutated a result", mxs)
	}

	// A cached answer's TTL counts down.
	mu.Lock()
	now = now.Add(20 * time.Second)
	mu.Unlock()
	before := s.Queries()
	mxs, err := c.LookupMX(ctx, "cached.example")
	if err != nil || mxs.TTL != 40*time.Second || s.Queries() != before {
		t.Fatalf("20s later: LookupMX = %+v, %v after %d queries; want TTL 40s from the cache", mxs, err, s.Queries()-before)
	}

	mu.Lock()
	now = now.Add(41 * time.Second)
	mu.Unlock()
	before = s.Queries()
	lookups()
	if got := s.Queries() - before; got != 3 {
		t.Fatalf("after TTL expiry lookups sent %d queries, want 3", got)
	}

	before = s.Queries()
	for i := 0; i < 2; i++ {
		if _, err := c.LookupMX(ctx, "uncached.example"); err != nil {
			t.Fatal(err)
		}
	}
	if got := s.Queries() - before; got != 2 {
		t.Fatalf("TTL 0 answers were cached: %d queries, want 2", got)
	}
}

func TestCacheTTLLimits(t *testing.T) {
	s := dnstest.NewServer(t)
	s.SetTTL(86400)
	s.AddTXT("day.example", "a day")
	s.SetTTL(1 << 31) // top bit set: RFC 2181 section 8 says 0
	s.AddTXT("huge.example", "huge")
	now := time.Unix(1_700_000_000, 0)
	c := newClient(t, s, dnsx.Options{MaxTTL: 10 * time.Minute, Now: func() time.Time { return now }})
	ctx := context.Background()

	for range 2 {
		r, err := c.LookupTXT(ctx, "day.example")
		if err != nil || r.TTL != 10*time.Minute {
			t.Fatalf("LookupTXT(day) = %+v, %v; want TTL capped at 10m", r, err)
		}
	}
	if s.Queries() != 1 {
		t.Fatalf("%d queries, want 1 (cached)", s.Queries())
	}
	for range 2 {
		r, err := c.LookupTXT(ctx, "huge.example")
		if err != nil || r.TTL != 0 {
			t.Fatalf("LookupTXT(huge) = %+v, %v; want TTL 0", r, err)
		}
	}
	if s.Queries() != 3 {
		t.Fatalf("%d queries, want 3 (TTL 0 not cached)", s.Queries())
	}
}

func TestNegativeCache(t *testing.T) {
	s := dnstest.NewServer(t)
	s.SetTTL(300)
	s.AddMX("example.org", 10, "mx.example.org")
	var mu sync.Mutex
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	ctx := context.Background()

	tests := []struct {
		name     string
		negTTL   uint32        // SOA TTL and MINIMUM served
		maxNeg   time.Duration // Options.MaxNegativeTTL
		cacheFor time.Duration // how long the answer is cached
	}{
		{name: "no SOA TTL: not cached", negTTL: 0, cacheFor: 0},
		{name: "SOA minimum", negTTL: 30, cacheFor: 30 * time.Second},
		{name: "default cap of 5 minutes", negTTL: 86400, cacheFor: 5 * time.Minute},
		{name: "configured cap", negTTL: 86400, maxNeg: 10 * time.Second, cacheFor: 10 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.SetNegativeTTL(tt.negTTL)
			c := newClient(t, s, dnsx.Options{Now: clock, MaxNegativeTTL: tt.maxNeg})
			lookups := func(want outcome) {
				t.Helper()
				_, err := c.LookupMX(ctx, "nope.example")
				wantOutcome(t, err, want)
				_, err = c.LookupTXT(ctx, "example.org") // NODATA
				wantOutcome(t, err, noData)
			}
			before := s.Queries()
			lookups(notFound)
			lookups(notFound)
			want := 2
			if tt.cacheFor == 0 {
				want = 4
			}
			if got := s.Queries() - before; got != want {
				t.Fatalf("%d queries for two rounds, want %d", got, want)
			}
			if tt.cacheFor == 0 {
				return
			}
			// Publishing the records is seen once the negative answer expires.
			s.AddMX("nope.example", 10, "mx.example.org")
			defer s.Remove("nope.example")
			advance(tt.cacheFor - time.Second)
			lookups(notFound)
			advance(time.Second)
			lookups(records)
			if got := s.Queries() - before; got != 4 {
				t.Fatalf("%d queries, want 4", got)
			}
		})
	}
}

func TestCacheBounded(t *testing.T) {
	s := dnstest.NewServer(t)
	s.SetTTL(300)
	for i := 0; i < 20; i++ {
		s.AddMX(fmt.Sprintf("d%d.example", i), 10, "mx.example")
	}
	c := newClient(t, s, dnsx.Options{CacheSize: 8})
	for i := 0; i < 20; i++ {
		if _, err := c.LookupMX(context.Background(), fmt.Sprintf("d%d.example", i)); err != nil {
			t.Fatal(err)
		}
	}
	// Everything still resolves correctly after evictions.
	mxs, err := c.LookupMX(context.Background(), "d3.example")
	if err != nil || len(mxs.Records) != 1 || mxs.Records[0].Host != "mx.example" {
		t.Fatalf("LookupMX after eviction = %v, %v", mxs, err)
	}
}

func TestServerFromResolvConf(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(path, []byte("# test\nsearch example.org\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := dnsx.New(dnsx.Options{ResolvConf: path})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Server(); got != "192.0.2.53:53" {
		t.Fatalf("Server() = %q, want 192.0.2.53:53", got)
	}
	if _, err := dnsx.New(dnsx.Options{ResolvConf: filepath.Join(dir, "missing")}); err == nil {
		t.Fatal("New with a missing resolv.conf and no server succeeded")
	}
	c, err = dnsx.New(dnsx.Options{Server: "::1"})
	if err != nil || c.Server() != "[::1]:53" {
		t.Fatalf("New(::1) = %v, %v; want [::1]:53", c.Server(), err)
	}
}

// TestConcurrentMissesShareOneQuery: lookups of one name and type that
// miss the cache at once send one query (the server holds it until all
// have joined); one whose ctx is cancelled meanwhile gets a "cancelled"
// TemporaryError, and the query still answers the others. The cache is
// off, so only the merging can keep the count at one.
func TestConcurrentMissesShareOneQuery(t *testing.T) {
	srv := dnstest.NewServer(t)
	srv.AddTXT("_mta-sts.example.test", "v=STSv1; id=one")
	c, err := dnsx.New(dnsx.Options{Server: srv.Addr(), CacheSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	release := srv.Hold()
	const n = 8
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := c.LookupTXT(context.Background(), "_mta-sts.example.test")
			if err != nil || len(res.Records) != 1 || res.Records[0] != "v=STSv1; id=one" {
				t.Errorf("LookupTXT = %+v, %v", res, err)
			}
		}()
	}
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error, 1)
	go func() {
		_, err := c.LookupTXT(ctx, "_mta-sts.example.test")
		gaveUp <- err
	}()
	// A generous bound on an asynchronous outcome, not a speed assertion.
	for deadline := time.Now().Add(30 * time.Second); c.WaitingTXT("_mta-sts.example.test") != n+1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the lookups did not all join one query in flight")
		}
	}
	cancel()
	var te *dnsx.TemporaryError
	if err := <-gaveUp; !errors.As(err, &te) || te.Reason != "cancelled" || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled lookup: err %v, want a cancelled TemporaryError", err)
	}
	release()
	wg.Wait()
	if q := srv.Queries(); q != 1 {
		t.Fatalf("server got %d queries, want 1", q)
	}
}
