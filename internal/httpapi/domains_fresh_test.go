package httpapi

import (
	"net/http"
	"testing"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/dkim"
	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/internal/domains"
)

// TestDomainsFreshPastResolverCache: with a caching resolver (as the
// node's is) and records served with a one-hour TTL, an operator who
// fixes a wrong DKIM record and adds the missing DMARC one sees the
// domain verified at the next ?fresh=true check (sluice domain verify),
// not an hour later.
func TestDomainsFreshPastResolverCache(t *testing.T) {
	e, dns, _ := newDomainsEnv(t, 0)
	dns.SetTTL(3600)
	dns.SetNegativeTTL(300)
	r := e.do("POST", "/v1/domains", e.sendKey, map[string]any{"domain": "example.com"})
	if r.Status != http.StatusCreated {
		t.Fatalf("POST: %d %s", r.Status, r.Body)
	}
	var added domainAnswer
	r.json(t, &added)
	var want domains.Status
	for _, s := range added.Records {
		if s.Kind == domains.KindDKIM {
			want = s
		}
	}
	state := ""
	get := func() map[string]domains.Status {
		t.Helper()
		r := e.do("GET", "/v1/domains/example.com?fresh=true", e.sendKey, nil)
		if r.Status != http.StatusOK {
			t.Fatalf("GET: %d %s", r.Status, r.Body)
		}
		var a domainAnswer
		r.json(t, &a)
		state = a.State
		got := map[string]domains.Status{}
		for _, s := range a.Records {
			got[s.Kind] = s
		}
		return got
	}

	other, _ := dkim.Generate(dkim.AlgoRSA)
	otherValue, _ := dkim.RecordValue(other)
	dns.AddTXT("example.com", "v=spf1 include:_spf.relay.test ~all")
	dns.AddTXT("sluice._domainkey.example.com", dkim.SplitTXT(otherValue)...)
	got := get()
	if got[domains.KindDKIM].State != domains.Wrong || got[domains.KindDMARC].State != domains.Missing {
		t.Fatalf("before the fix: dkim %s, dmarc %s", got[domains.KindDKIM].State, got[domains.KindDMARC].State)
	}

	dns.Remove("sluice._domainkey.example.com")
	dns.AddTXT("sluice._domainkey.example.com", dkim.SplitTXT(want.Value)...)
	dns.AddTXT("_dmarc.example.com", "v=DMARC1; p=none")
	got = get()
	if got[domains.KindDKIM].State != domains.Verified || got[domains.KindDMARC].State != domains.Verified || state != "verified" {
		t.Errorf("after the fix: domain %s, dkim %s (%s), dmarc %s (%s)", state,
			got[domains.KindDKIM].State, got[domains.KindDKIM].Detail, got[domains.KindDMARC].State, got[domains.KindDMARC].Detail)
	}
}

// newDomainsEnv is an API env whose domains registry asks a loopback DNS
// server (SPF include _spf.relay.test) through a resolver with the given
// dnsx cache size (0 the default cache, -1 none), and the registry.
func newDomainsEnv(t *testing.T, cacheSize int) (*env, *dnstest.Server, *domains.Registry) {
	t.Helper()
	e := newEnv(t, envOptions{noDelivery: true})
	dns := dnstest.NewServer(t)
	res, err := dnsx.New(dnsx.Options{Server: dns.Addr(), CacheSize: cacheSize})
	if err != nil {
		t.Fatal(err)
	}
	pol := config.DefaultDomains()
	pol.SPFInclude = "_spf.relay.test"
	reg, err := domains.NewRegistry(e.sp, res, pol)
	if err != nil {
		t.Fatal(err)
	}
	e.srv.UseDomains(reg)
	return e, dns, reg
}
