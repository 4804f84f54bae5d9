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
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/pipeline"
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

// wantErr checks err is a *pipeline.Error with the given code and enhanced
// code, and that IsTemporary agrees with the code class.
func wantErr(t *testing.T, err error, code int, enh string) {
	t.Helper()
	var pe *pipeline.Error
	if !errors.As(err, &pe) {
		t.Fatalf("err = %v (%T), want *pipeline.Error %d %s", err, err, code, enh)
	}
	if pe.Code != code || pe.EnhancedOrDefault().String() != enh {
		t.Fatalf("err = %d %s %q, want %d %s", pe.Code, pe.EnhancedOrDefault(), pe.Message, code, enh)
	}
	if got, want := pipeline.IsTemporary(err), code/100 == 4; got != want {
		t.Fatalf("IsTemporary = %v, want %v", got, want)
	}
}

func TestLookupMX(t *testing.T) {
	s := dnstest.NewServer(t)
	s.AddMX("example.org", 20, "MX2.example.org")
	s.AddMX("example.org", 10, "mx1.example.org.")
	s.AddA("plain.example", "192.0.2.7")
	s.SetNullMX("null.example")
	s.AddA("null.example", "192.0.2.8")
	s.SetServfail("broken.example")
	s.AddA("host.deep.example", "192.0.2.9")

	c := newClient(t, s, dnsx.Options{})
	ctx := context.Background()

	tests := []struct {
		name   string
		domain string
		want   []dnsx.MX
		null   bool
		code   int
		enh    string
		notFnd bool
	}{
		{name: "records", domain: "example.org", want: []dnsx.MX{{"mx2.example.org", 20}, {"mx1.example.org", 10}}},
		{name: "trailing dot and case", domain: "EXAMPLE.org.", want: []dnsx.MX{{"mx2.example.org", 20}, {"mx1.example.org", 10}}},
		{name: "no MX is empty, not an error", domain: "plain.example"},
		{name: "empty non-terminal", domain: "deep.example"},
		{name: "null MX", domain: "null.example", want: []dnsx.MX{{".", 0}}, null: true},
		{name: "NXDOMAIN", domain: "nope.example", code: 550, enh: "5.1.2", notFnd: true},
		{name: "SERVFAIL", domain: "broken.example", code: 451, enh: "4.4.3"},
		{name: "invalid name", domain: "bad..example", code: 550, enh: "5.1.2"},
		{name: "empty name", domain: "", code: 550, enh: "5.1.2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.LookupMX(ctx, tt.domain)
			if tt.code != 0 {
				wantErr(t, err, tt.code, tt.enh)
				if dnsx.IsNotFound(err) != tt.notFnd {
					t.Fatalf("IsNotFound(%v) = %v, want %v", err, !tt.notFnd, tt.notFnd)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("LookupMX = %v, want %v", got, tt.want)
			}
			if dnsx.IsNullMX(got) != tt.null {
				t.Fatalf("IsNullMX(%v) = %v", got, !tt.null)
			}
		})
	}
}

func TestLookupHost(t *testing.T) {
	s := dnstest.NewServer(t)
	s.AddA("mx.example.org", "192.0.2.1")
	s.AddA("mx.example.org", "2001:db8::1")
	s.AddA("mx.example.org", "192.0.2.2")
	s.AddMX("v6only.example", 10, "mx.example.org")
	s.AddAAAA("v6.example", "2001:db8::2")
	s.SetServfail("broken.example")
	// 100 addresses do not fit in 1232 bytes: the UDP answer is truncated
	// and the client must retry over TCP.
	var many []netip.Addr
	for i := 0; i < 100; i++ {
		ip := netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
		many = append(many, ip)
		s.AddA("big.example", ip.String())
	}
	c := newClient(t, s, dnsx.Options{})
	ctx := context.Background()

	tests := []struct {
		name string
		host string
		want []netip.Addr
		code int
		enh  string
	}{
		{name: "A then AAAA", host: "mx.example.org", want: addrs("192.0.2.1", "192.0.2.2", "2001:db8::1")},
		{name: "AAAA only", host: "v6.example", want: addrs("2001:db8::2")},
		{name: "IPv4 literal", host: "192.0.2.55", want: addrs("192.0.2.55")},
		{name: "IPv6 literal in brackets", host: "[2001:db8::5]", want: addrs("2001:db8::5")},
		{name: "exists without addresses", host: "v6only.example"},
		{name: "truncated answer retried over TCP", host: "big.example", want: many},
		{name: "NXDOMAIN", host: "nope.example", code: 550, enh: "5.1.2"},
		{name: "SERVFAIL", host: "broken.example", code: 451, enh: "4.4.3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.LookupHost(ctx, tt.host)
			if tt.code != 0 {
				wantErr(t, err, tt.code, tt.enh)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("LookupHost = %v, want %v", got, tt.want)
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

func TestTemporaryNetworkFailures(t *testing.T) {
	t.Run("timeout", func(t *testing.T) {
		s := dnstest.NewServer(t)
		s.SetTimeout("slow.example")
		c := newClient(t, s, dnsx.Options{Timeout: 100 * time.Millisecond, Attempts: 2})
		start := time.Now()
		_, err := c.LookupMX(context.Background(), "slow.example")
		wantErr(t, err, 451, "4.4.3")
		if d := time.Since(start); d < 200*time.Millisecond {
			t.Fatalf("gave up after %v, want two 100ms attempts", d)
		}
		if s.Queries() != 2 {
			t.Fatalf("server saw %d queries, want 2 attempts", s.Queries())
		}
	})
	t.Run("context deadline", func(t *testing.T) {
		s := dnstest.NewServer(t)
		s.SetTimeout("slow.example")
		c := newClient(t, s, dnsx.Options{Timeout: 10 * time.Second})
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := c.LookupHost(ctx, "slow.example")
		wantErr(t, err, 451, "4.4.3")
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
		wantErr(t, err, 451, "4.4.3")
		if dnsx.IsNotFound(err) {
			t.Fatal("a network error must not look like NXDOMAIN")
		}
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
	if want := []dnsx.MX{{"mx.xn--bcher-kva.example", 5}}; !slices.Equal(mxs, want) {
		t.Fatalf("LookupMX = %v, want %v", mxs, want)
	}
	ips, err := c.LookupHost(context.Background(), "mx.bücher.example")
	if err != nil || len(ips) != 1 {
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
	mxs[0].Host = "evil.example"
	mxs, _ = c.LookupMX(ctx, "cached.example")
	if mxs[0].Host != "mx.cached.example" {
		t.Fatalf("cache returned %v after caller mutated a result", mxs)
	}

	mu.Lock()
	now = now.Add(61 * time.Second)
	mu.Unlock()
	before := s.Queries()
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
	if err != nil || len(mxs) != 1 || mxs[0].Host != "mx.example" {
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
