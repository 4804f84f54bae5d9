package dnstest_test

import (
	"fmt"
	"testing"

	"github.com/miekg/dns"

	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
)

func exchange(t *testing.T, s *dnstest.Server, netw, name string, qtype uint16, edns uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	if edns > 0 {
		m.SetEdns0(edns, false)
	}
	c := &dns.Client{Net: netw}
	r, _, err := c.Exchange(m, s.Addr())
	if err != nil {
		t.Fatalf("%s query %s: %v", netw, name, err)
	}
	return r
}

func TestServer(t *testing.T) {
	s := dnstest.NewServer(t)
	s.AddMX("Example.ORG", 10, "mx.example.org")
	s.AddA("a.b.example.org", "192.0.2.1")
	s.AddTXT("example.org", "v=spf1 -all")
	s.SetServfail("fail.example")
	for i := 0; i < 60; i++ {
		s.AddA("big.example", fmt.Sprintf("198.51.100.%d", i))
	}

	if r := exchange(t, s, "udp", "example.org", dns.TypeMX, 0); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("MX: %v", r)
	}
	if r := exchange(t, s, "udp", "example.org", dns.TypeTXT, 0); len(r.Answer) != 1 || r.Answer[0].(*dns.TXT).Txt[0] != "v=spf1 -all" {
		t.Fatalf("TXT: %v", r)
	}
	if r := exchange(t, s, "udp", "example.org", dns.TypeA, 0); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Fatalf("NODATA: %v", r)
	}
	if r := exchange(t, s, "udp", "b.example.org", dns.TypeA, 0); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("empty non-terminal: %v", r)
	}
	if r := exchange(t, s, "udp", "nope.example.org", dns.TypeA, 0); r.Rcode != dns.RcodeNameError {
		t.Fatalf("NXDOMAIN: %v", r)
	}
	if r := exchange(t, s, "udp", "fail.example", dns.TypeMX, 0); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("SERVFAIL: %v", r)
	}
	// 60 A records (about 960 bytes) do not fit in 512 bytes over UDP.
	if r := exchange(t, s, "udp", "big.example", dns.TypeA, 0); !r.Truncated {
		t.Fatalf("512-byte UDP answer not truncated: %d records", len(r.Answer))
	}
	if r := exchange(t, s, "udp", "big.example", dns.TypeA, 4096); r.Truncated || len(r.Answer) != 60 {
		t.Fatalf("EDNS0 4096 answer: truncated=%v, %d records", r.Truncated, len(r.Answer))
	}
	if r := exchange(t, s, "tcp", "big.example", dns.TypeA, 0); r.Truncated || len(r.Answer) != 60 {
		t.Fatalf("TCP answer: truncated=%v, %d records", r.Truncated, len(r.Answer))
	}
	s.Remove("fail.example")
	if r := exchange(t, s, "udp", "fail.example", dns.TypeMX, 0); r.Rcode != dns.RcodeNameError {
		t.Fatalf("after Remove: %v", r)
	}
	s.SetNullMX("example.org")
	if r := exchange(t, s, "udp", "example.org", dns.TypeMX, 0); len(r.Answer) != 1 || r.Answer[0].(*dns.MX).Mx != "." {
		t.Fatalf("null MX: %v", r)
	}
	if s.Queries() != 11 {
		t.Fatalf("Queries() = %d, want 11", s.Queries())
	}
}

func TestNegativeAnswersCarrySOA(t *testing.T) {
	s := dnstest.NewServer(t)
	s.AddA("host.example", "192.0.2.1")
	s.SetServfail("fail.example")
	for _, tt := range []struct {
		name   string
		ttl    uint32
		rcode  int
		hasSOA bool
	}{
		{"nope.example", 0, dns.RcodeNameError, true},
		{"host.example", 0, dns.RcodeSuccess, true}, // NODATA for MX
		{"nope.example", 600, dns.RcodeNameError, true},
		{"fail.example", 600, dns.RcodeServerFailure, false},
	} {
		s.SetNegativeTTL(tt.ttl)
		r := exchange(t, s, "udp", tt.name, dns.TypeMX, 0)
		if r.Rcode != tt.rcode || len(r.Answer) != 0 {
			t.Fatalf("%s: rcode %d, %d answers", tt.name, r.Rcode, len(r.Answer))
		}
		if !tt.hasSOA {
			if len(r.Ns) != 0 {
				t.Fatalf("%s: authority %v, want none", tt.name, r.Ns)
			}
			continue
		}
		soa, ok := r.Ns[0].(*dns.SOA)
		if len(r.Ns) != 1 || !ok || soa.Hdr.Ttl != tt.ttl || soa.Minttl != tt.ttl || soa.Hdr.Name != "example." {
			t.Fatalf("%s: authority %v, want an SOA for example. with TTL and MINIMUM %d", tt.name, r.Ns, tt.ttl)
		}
	}
	// A positive answer has no SOA.
	if r := exchange(t, s, "udp", "host.example", dns.TypeA, 0); len(r.Answer) != 1 || len(r.Ns) != 0 {
		t.Fatalf("positive answer: %v", r)
	}
}

func TestCNAME(t *testing.T) {
	s := dnstest.NewServer(t)
	s.AddCNAME("www.example", "web.example")
	s.AddCNAME("web.example", "host.example")
	s.AddA("host.example", "192.0.2.1")
	s.AddCNAME("dangling.example", "nope.example")

	r := exchange(t, s, "udp", "www.example", dns.TypeA, 0)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 3 || r.Answer[2].(*dns.A).A.String() != "192.0.2.1" {
		t.Fatalf("CNAME chain: %v", r)
	}
	if r := exchange(t, s, "udp", "www.example", dns.TypeCNAME, 0); len(r.Answer) != 1 {
		t.Fatalf("CNAME query: %v", r)
	}
	if r := exchange(t, s, "udp", "www.example", dns.TypeMX, 0); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 2 || len(r.Ns) != 1 {
		t.Fatalf("NODATA through a chain: %v", r)
	}
	if r := exchange(t, s, "udp", "dangling.example", dns.TypeA, 0); r.Rcode != dns.RcodeNameError || len(r.Answer) != 1 {
		t.Fatalf("dangling CNAME: %v", r)
	}
}

func TestTXTBytes(t *testing.T) {
	s := dnstest.NewServer(t)
	raw := `a\b"c` + "\xff"
	s.AddTXT("example.org", raw, "")
	r := exchange(t, s, "tcp", "example.org", dns.TypeTXT, 0)
	if len(r.Answer) != 1 {
		t.Fatalf("TXT: %v", r)
	}
	// miekg/dns escapes what it unpacks: \\ \" and \DDD.
	if got := r.Answer[0].(*dns.TXT).Txt; len(got) != 2 || got[0] != `a\\b\"c\255` || got[1] != "" {
		t.Fatalf("TXT strings %q", got)
	}
}
