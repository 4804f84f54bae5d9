package domains

import (
	"context"
	"net/netip"
	"testing"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/dkim"
	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/internal/shaping"
)

func TestMergeSPF(t *testing.T) {
	for _, c := range []struct{ have, want, out string }{
		{"v=spf1 -all", "v=spf1 include:a.example ~all", "v=spf1 include:a.example -all"},
		{"v=spf1 mx include:A.example ~all", "v=spf1 include:a.example ~all", "v=spf1 mx include:A.example ~all"},
		{"v=spf1 mx redirect=_spf.example", "v=spf1 ip4:192.0.2.1 ~all", "v=spf1 mx ip4:192.0.2.1 redirect=_spf.example"},
		{"v=spf1 mx", "v=spf1 include:a.example ip6:2001:db8::1 ~all", "v=spf1 mx include:a.example ip6:2001:db8::1"},
		{"v=spf1 +include:a.example ?all", "v=spf1 include:a.example ~all", "v=spf1 +include:a.example ?all"},
		// the same include with a trailing dot, in another case
		{"v=spf1 include:A.example. -all", "v=spf1 include:a.example ~all", "v=spf1 include:A.example. -all"},
		// after all a mechanism is never evaluated (RFC 7208 section 5.1)
		{"v=spf1 mx ?all include:a.example", "v=spf1 include:a.example ~all", "v=spf1 mx include:a.example ?all include:a.example"},
	} {
		if got := mergeSPF(c.have, c.want); got != c.out {
			t.Errorf("mergeSPF(%q, %q) = %q, want %q", c.have, c.want, got, c.out)
		}
	}
}

// TestCheckStates: each record kind's verified / missing / wrong /
// unknown outcomes against a loopback DNS server.
func TestCheckStates(t *testing.T) {
	srv := dnstest.NewServer(t)
	res, err := dnsx.New(dnsx.Options{Server: srv.Addr(), CacheSize: -1, Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := dkim.Generate(dkim.AlgoEd25519)
	p := config.DefaultDomains()
	p.SPFIPs = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::1/128")}
	p.ReturnPathMX = "MX.Relay.Example."
	recs, err := Records("d.example", p, []DKIMKey{{Selector: "s1", Signer: key}})
	if err != nil {
		t.Fatal(err)
	}
	if recs[0].Value != "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::1 ~all" || recs[3].Zone != "bounces.d.example. 3600 IN MX 10 mx.relay.example." {
		t.Fatalf("records %+v", recs)
	}
	// Two SPF records; a DKIM record with whitespace inside p= (RFC 6376
	// allows it); two DMARC records; an MX to elsewhere; the return-path
	// SPF server failing.
	srv.AddTXT("d.example", "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::1 ~all")
	srv.AddTXT("d.example", "v=spf1 -all")
	v := recs[1].Value
	srv.AddTXT("s1._domainkey.d.example", v[:len(v)-10], " "+v[len(v)-10:])
	srv.AddTXT("_dmarc.d.example", "v=DMARC1; p=none")
	srv.AddTXT("_dmarc.d.example", "v=DMARC1; p=reject")
	srv.AddMX("bounces.d.example", 10, "mx.elsewhere.example")
	srv.SetServfail("bounces.d.example")
	st := Check(context.Background(), res, recs)
	want := []string{Wrong, Verified, Wrong, Unknown, Unknown}
	for i, s := range st {
		if s.State != want[i] {
			t.Errorf("%s %s: %s (%s), want %s", s.Kind, s.Name, s.State, s.Detail, want[i])
		}
	}
	if OK(st) {
		t.Error("OK with wrong records")
	}
	srv.Remove("bounces.d.example")
	srv.AddMX("bounces.d.example", 10, "mx.elsewhere.example")
	srv.Remove("_dmarc.d.example")
	srv.AddTXT("_dmarc.d.example", "v=DMARC1; rua=mailto:x@d.example")
	st = Check(context.Background(), res, recs)
	if s := st[2]; s.State != Wrong || s.Detail != "the v=DMARC1 record has no p= policy (none, quarantine or reject)" {
		t.Errorf("dmarc without p=: %+v", s)
	}
	if s := st[3]; s.State != Wrong || s.Fix != recs[3].Zone || len(s.Found) != 1 || s.Found[0] != "mx.elsewhere.example" {
		t.Errorf("return-path MX elsewhere: %+v", s)
	}
	if s := st[4]; s.State != Missing {
		t.Errorf("return-path SPF (an MX only): %+v", s)
	}
}

// TestPolicyOfEgress: without spf_include or spf_ips, SPF names the
// egress sources' addresses; either key wins over them.
func TestPolicyOfEgress(t *testing.T) {
	cfg := config.Defaults()
	cfg.Egress = &config.Egress{Sources: []shaping.Source{
		{Name: "a", Address: netip.MustParseAddr("192.0.2.9")}, {Name: "sys"}, {Name: "b", Address: netip.MustParseAddr("2001:db8::9")},
	}}
	recs, err := Records("d.example", PolicyOf(cfg), nil)
	if err != nil || recs[0].Kind != KindSPF || recs[0].Value != "v=spf1 ip4:192.0.2.9 ip6:2001:db8::9 ~all" {
		t.Fatalf("%v %+v", err, recs)
	}
	cfg.Domains.SPFInclude = "_spf.relay.example"
	if p := PolicyOf(cfg); len(p.SPFIPs) != 0 {
		t.Errorf("spf_include set, egress addresses added: %v", p.SPFIPs)
	}
	cfg.Domains.SPFInclude, cfg.Egress = "", nil
	if recs, _ := Records("d.example", PolicyOf(cfg), nil); recs[0].Kind != KindDMARC {
		t.Errorf("no SPF source, records %+v", recs)
	}
}

// TestCheckDMARCCase: RFC 7489 section 6.4 tag names and keyword values
// are case-insensitive, the DMARC1 version is not.
func TestCheckDMARCCase(t *testing.T) {
	for rec, want := range map[string]string{
		"V=DMARC1; P=REJECT":          Verified,
		"v = DMARC1 ; p = Quarantine": Verified,
		"v=DMARC1; p=bogus":           Wrong,
		"v=dmarc1; p=reject":          Missing, // not a DMARC record
	} {
		st := Status{Record: Record{Kind: KindDMARC, Name: "_dmarc.d.example"}}
		checkDMARC(&st, []string{rec})
		if st.State != want {
			t.Errorf("%q: %s (%s), want %s", rec, st.State, st.Detail, want)
		}
	}
}
