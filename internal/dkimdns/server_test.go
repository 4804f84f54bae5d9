package dkimdns

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fakeZone is a Zone in memory.
type fakeZone struct {
	mu     sync.Mutex
	serial uint32
	keys   map[string]map[string]string
}

func (z *fakeZone) Lookup(label, sel string) (string, bool, bool) {
	z.mu.Lock()
	defer z.mu.Unlock()
	s, ok := z.keys[label]
	if !ok {
		return "", false, false
	}
	v, found := s[sel]
	return v, found, true
}

func (z *fakeZone) Serial() uint32 { z.mu.Lock(); defer z.mu.Unlock(); return z.serial }

func (z *fakeZone) set(label, sel, v string) {
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.keys[label] == nil {
		z.keys[label] = map[string]string{}
	}
	z.keys[label][sel] = v
	z.serial++
}

func start(t *testing.T) (*Server, *fakeZone) {
	t.Helper()
	z := &fakeZone{serial: 7, keys: map[string]map[string]string{}}
	s := New(Options{Zone: "dkim.relay.test", NS: []string{"ns1.relay.test", "ns2.relay.test"}, Hostmaster: "hostmaster.relay.test", TTL: 300 * time.Second}, z)
	if err := s.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown() })
	return s, z
}

func ask(t *testing.T, addr, net, name string, qtype uint16, edns uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.RecursionDesired = true
	if edns > 0 {
		m.SetEdns0(edns, false)
	}
	c := &dns.Client{Net: net, Timeout: 5 * time.Second, UDPSize: 65535}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s over %s: %v", name, dns.TypeToString[qtype], net, err)
	}
	if r.RecursionAvailable {
		t.Errorf("%s: RA set: the listener does no recursion", name)
	}
	return r
}

func soaIn(r *dns.Msg) *dns.SOA {
	for _, rr := range r.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return soa
		}
	}
	return nil
}

func TestAuthoritativeAnswers(t *testing.T) {
	s, z := start(t)
	rsaLike := "v=DKIM1; k=rsa; p=" + strings.Repeat("A", 392)
	z.set("customer-example", "s1", rsaLike)
	z.set("customer-example", "s2", "v=DKIM1; k=rsa; p=")

	// Apex: SOA and NS, authoritative.
	r := ask(t, s.Addr(), "udp", "DKIM.relay.test", dns.TypeSOA, 0)
	if r.Rcode != dns.RcodeSuccess || !r.Authoritative || len(r.Answer) != 1 {
		t.Fatalf("SOA: %v", r)
	}
	soa := r.Answer[0].(*dns.SOA)
	if soa.Ns != "ns1.relay.test." || soa.Mbox != "hostmaster.relay.test." || soa.Serial != 9 || soa.Minttl != 300 || soa.Hdr.Ttl != 300 {
		t.Errorf("SOA: %v", soa)
	}
	r = ask(t, s.Addr(), "udp", "dkim.relay.test", dns.TypeNS, 0)
	if len(r.Answer) != 2 || r.Answer[1].(*dns.NS).Ns != "ns2.relay.test." {
		t.Errorf("NS: %v", r)
	}
	// A key, split into strings of at most 255 octets; found over TCP too.
	for _, proto := range []string{"udp", "tcp"} {
		r = ask(t, s.Addr(), proto, "s1.customer-example.dkim.relay.test", dns.TypeTXT, 4096)
		if r.Rcode != dns.RcodeSuccess || !r.Authoritative || len(r.Answer) != 1 {
			t.Fatalf("%s TXT: %v", proto, r)
		}
		txt := r.Answer[0].(*dns.TXT)
		if strings.Join(txt.Txt, "") != rsaLike || len(txt.Txt) != 2 || txt.Hdr.Ttl != 300 {
			t.Errorf("%s TXT: %q", proto, txt.Txt)
		}
	}
	// Revoked: empty p=.
	r = ask(t, s.Addr(), "udp", "s2.customer-example.dkim.relay.test", dns.TypeTXT, 0)
	if len(r.Answer) != 1 || strings.Join(r.Answer[0].(*dns.TXT).Txt, "") != "v=DKIM1; k=rsa; p=" {
		t.Errorf("revoked: %v", r)
	}
	// NODATA: the name exists, no record of the type; SOA in authority.
	for _, q := range []struct {
		name  string
		qtype uint16
	}{{"s1.customer-example.dkim.relay.test", dns.TypeA}, {"customer-example.dkim.relay.test", dns.TypeTXT}, {"dkim.relay.test", dns.TypeTXT}} {
		r = ask(t, s.Addr(), "udp", q.name, q.qtype, 0)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 || soaIn(r) == nil || !r.Authoritative {
			t.Errorf("NODATA %s %s: %v", q.name, dns.TypeToString[q.qtype], r)
		}
	}
	// NXDOMAIN: unknown selector, unknown domain label, deeper names.
	for _, name := range []string{"s3.customer-example.dkim.relay.test", "s1.other-example.dkim.relay.test",
		"other-example.dkim.relay.test", "x.s1.customer-example.dkim.relay.test"} {
		r = ask(t, s.Addr(), "udp", name, dns.TypeTXT, 0)
		if r.Rcode != dns.RcodeNameError || soaIn(r) == nil || !r.Authoritative {
			t.Errorf("NXDOMAIN %s: %v", name, r)
		}
	}
	// Other zones: REFUSED, no data, not authoritative.
	for _, name := range []string{"example.com", "relay.test", "xdkim.relay.test"} {
		r = ask(t, s.Addr(), "udp", name, dns.TypeTXT, 0)
		if r.Rcode != dns.RcodeRefused || len(r.Answer)+len(r.Ns) != 0 || r.Authoritative {
			t.Errorf("REFUSED %s: %v", name, r)
		}
	}
	// A change shows at once, with a new serial.
	z.set("customer-example", "s3", "v=DKIM1; k=ed25519; p=abc")
	r = ask(t, s.Addr(), "udp", "s3.customer-example.dkim.relay.test", dns.TypeTXT, 0)
	if len(r.Answer) != 1 || soaIn(ask(t, s.Addr(), "udp", "nx.dkim.relay.test", dns.TypeTXT, 0)).Serial != 10 {
		t.Errorf("after a change: %v", r)
	}
}

// TestTruncation: an answer over 512 octets to a client without EDNS0
// comes back over UDP with TC set and no partial record set; over TCP it
// is whole.
func TestTruncation(t *testing.T) {
	s, z := start(t)
	big := "v=DKIM1; k=rsa; p=" + strings.Repeat("B", 700) // an RSA-4096 key is about this size
	z.set("big-example", "s1", big)
	r := ask(t, s.Addr(), "udp", "s1.big-example.dkim.relay.test", dns.TypeTXT, 0)
	if !r.Truncated || len(r.Answer) != 0 {
		t.Fatalf("UDP without EDNS0: TC %v, %d answers", r.Truncated, len(r.Answer))
	}
	r = ask(t, s.Addr(), "tcp", "s1.big-example.dkim.relay.test", dns.TypeTXT, 0)
	if r.Truncated || len(r.Answer) != 1 || strings.Join(r.Answer[0].(*dns.TXT).Txt, "") != big {
		t.Fatalf("TCP: %v", r)
	}
	r = ask(t, s.Addr(), "udp", "s1.big-example.dkim.relay.test", dns.TypeTXT, 1232)
	if r.Truncated || len(r.Answer) != 1 {
		t.Fatalf("UDP with EDNS0 1232: %v", r)
	}
}

func TestNotAQuery(t *testing.T) {
	s, _ := start(t)
	m := new(dns.Msg)
	m.SetUpdate("dkim.relay.test.")
	r, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, s.Addr())
	if err != nil || r.Rcode != dns.RcodeNotImplemented {
		t.Fatalf("UPDATE: %v %v", r, err)
	}
}

// TestZoneTransferRefused: AXFR and IXFR are REFUSED (RFC 5936 section
// 4.2): the listener transfers nothing, and an empty NOERROR answer
// would read to a secondary as a broken transfer rather than a refusal.
func TestZoneTransferRefused(t *testing.T) {
	s, _ := start(t)
	for _, qt := range []uint16{dns.TypeAXFR, dns.TypeIXFR} {
		if r := ask(t, s.Addr(), "tcp", "dkim.relay.test", qt, 0); r.Rcode != dns.RcodeRefused || len(r.Answer) != 0 {
			t.Errorf("%s: rcode %s, %d answer(s); want REFUSED", dns.TypeToString[qt], dns.RcodeToString[r.Rcode], len(r.Answer))
		}
	}
}

// BenchmarkAnswer: building the answer to one TXT query for an RSA-2048
// key (what the listener does per query, without the socket).
func BenchmarkAnswer(b *testing.B) {
	z := &fakeZone{serial: 1, keys: map[string]map[string]string{}}
	z.set("customer-example", "s1", "v=DKIM1; k=rsa; p="+strings.Repeat("A", 392))
	s := New(Options{Zone: "dkim.relay.test", NS: []string{"ns1.relay.test"}, Hostmaster: "hostmaster.relay.test", TTL: 300 * time.Second}, z)
	req := new(dns.Msg)
	req.SetQuestion("s1.customer-example.dkim.relay.test.", dns.TypeTXT)
	req.SetEdns0(1232, false)
	b.ReportAllocs()
	for b.Loop() {
		resp := s.Answer(req)
		if len(resp.Answer) != 1 {
			b.Fatal("no answer")
		}
		if _, err := resp.Pack(); err != nil {
			b.Fatal(err)
		}
	}
}
