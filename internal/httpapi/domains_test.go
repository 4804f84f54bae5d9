package httpapi

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/dkim"
	"github.com/sluice-mta/sluice/internal/domains"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestDomainsAPI: a domain registered through the API returns its
// records; with nothing published each is missing; a wrong DKIM key and a
// missing DMARC record are reported with their fixes; with every record
// served by a loopback DNS server it becomes verified (one
// domain_verified event); the domain is the tenant's alone; DELETE stops
// its key from signing.
func TestDomainsAPI(t *testing.T) {
	e, dns, reg := newDomainsEnv(t, -1)

	for _, c := range []struct {
		body  any
		field string
	}{
		{map[string]any{}, "domain"},
		{map[string]any{"domain": "no_such..name"}, "domain"},
		{map[string]any{"domain": "localhost"}, "domain"},
		{map[string]any{"domain": "co.uk"}, "domain"},     // a public suffix
		{map[string]any{"domain": "192.0.2.1"}, "domain"}, // an IP literal
		{map[string]any{"domain": 7}, "domain"},
		{map[string]any{"domain": "example.com", "selector": "x"}, "selector"},
	} {
		r := e.do("POST", "/v1/domains", e.sendKey, c.body)
		if r.Status != http.StatusBadRequest || r.errorOf(t).Field != c.field {
			t.Errorf("POST %v: %d %s; want 400 naming %s", c.body, r.Status, r.Body, c.field)
		}
	}

	r := e.do("POST", "/v1/domains", e.sendKey, map[string]any{"domain": "Example.COM."})
	if r.Status != http.StatusCreated {
		t.Fatalf("POST: %d %s", r.Status, r.Body)
	}
	var a domainAnswer
	r.json(t, &a)
	if a.Domain != "example.com" || a.Tenant != "acme" || a.State != "unverified" || len(a.Records) != 3 {
		t.Fatalf("answer %+v", a)
	}
	recs := map[string]domains.Status{}
	for _, s := range a.Records {
		recs[s.Kind] = s
	}
	if s := recs[domains.KindSPF]; s.Name != "example.com" || s.Value != "v=spf1 include:_spf.relay.test ~all" {
		t.Errorf("spf %+v", s)
	}
	if s := recs[domains.KindDKIM]; s.Name != "sluice._domainkey.example.com" || s.Selector != "sluice" {
		t.Errorf("dkim %+v", s)
	}
	if s := recs[domains.KindDMARC]; s.Name != "_dmarc.example.com" || s.Value != "v=DMARC1; p=none; adkim=r; aspf=r" {
		t.Errorf("dmarc %+v", s)
	}
	keys := reg.Keys("example.com")
	if len(keys) != 1 || keys[0].Algo != dkim.AlgoRSA {
		t.Fatalf("registered keys %+v", keys)
	}
	if v, _ := dkim.RecordValue(keys[0].Signer); v != recs[domains.KindDKIM].Value {
		t.Errorf("the DKIM record does not publish the signing key")
	}
	for _, key := range []string{e.sendKey, e.otherKey} {
		if r := e.do("POST", "/v1/domains", key, map[string]any{"domain": "example.com"}); r.Status != http.StatusConflict {
			t.Errorf("POST again: %d %s; want 409", r.Status, r.Body)
		}
	}

	get := func(key string) domainAnswer {
		t.Helper()
		r := e.do("GET", "/v1/domains/example.com?fresh=true", key, nil)
		if r.Status != http.StatusOK {
			t.Fatalf("GET: %d %s", r.Status, r.Body)
		}
		var a domainAnswer
		r.json(t, &a)
		return a
	}
	for _, s := range get(e.sendKey).Records {
		if s.State != domains.Missing || s.Fix != s.Zone {
			t.Errorf("nothing published: %s is %s, fix %q", s.Kind, s.State, s.Fix)
		}
	}

	// SPF right, a DKIM record with another key, no DMARC record.
	other, _ := dkim.Generate(dkim.AlgoRSA)
	otherValue, _ := dkim.RecordValue(other)
	dns.AddTXT("example.com", recs[domains.KindSPF].Value)
	dns.AddTXT("sluice._domainkey.example.com", dkim.SplitTXT(otherValue)...)
	a = get(e.sendKey)
	got := map[string]domains.Status{}
	for _, s := range a.Records {
		got[s.Kind] = s
	}
	if a.State != "unverified" || got[domains.KindSPF].State != domains.Verified {
		t.Errorf("state %s, spf %+v", a.State, got[domains.KindSPF])
	}
	if s := got[domains.KindDKIM]; s.State != domains.Wrong || s.Fix != recs[domains.KindDKIM].Zone || len(s.Found) != 1 || s.Found[0] != otherValue {
		t.Errorf("wrong dkim: %+v", s)
	}
	if s := got[domains.KindDMARC]; s.State != domains.Missing || s.Fix != `_dmarc.example.com. 3600 IN TXT "v=DMARC1; p=none; adkim=r; aspf=r"` {
		t.Errorf("missing dmarc: %+v", s)
	}
	if n := len(outboxEvents(t, e.sp, pipeline.EventDomainVerified)); n != 0 {
		t.Errorf("%d domain_verified events before it was", n)
	}

	// Fixed.
	dns.Remove("sluice._domainkey.example.com")
	dns.AddTXT("sluice._domainkey.example.com", dkim.SplitTXT(recs[domains.KindDKIM].Value)...)
	dns.AddTXT("_dmarc.example.com", "v=DMARC1; p=quarantine")
	a = get(e.sendKey)
	if a.State != "verified" || a.Verified == nil || !domains.OK(a.Records) {
		t.Errorf("after publishing: %+v", a)
	}
	get(e.sendKey) // still verified: no second event
	evs := outboxEvents(t, e.sp, pipeline.EventDomainVerified)
	if len(evs) != 1 || evs[0].Tenant != "acme" || evs[0].Metadata["domain"] != "example.com" {
		t.Errorf("domain_verified events %+v", evs)
	}
	if evs := outboxEvents(t, e.sp, pipeline.EventDomainAdded); len(evs) != 1 || evs[0].Metadata["domain"] != "example.com" {
		t.Errorf("domain_added events %+v", evs)
	}

	// A cached check is reused for check_cache (60 s here) unless fresh:
	// with the SPF record gone, GET still shows the last check, and
	// ?fresh=true sees it missing and the domain unverified again.
	dns.Remove("example.com")
	var cached domainAnswer
	e.do("GET", "/v1/domains/example.com", e.sendKey, nil).json(t, &cached)
	if cached.State != "verified" || !domains.OK(cached.Records) {
		t.Errorf("cached check: %+v", cached)
	}
	if a := get(e.sendKey); a.State != "unverified" || a.Verified != nil {
		t.Errorf("fresh check without SPF: %+v", a)
	}
	if evs := outboxEvents(t, e.sp, pipeline.EventDomainUnverified); len(evs) != 1 || !strings.Contains(evs[0].Metadata["records"], "spf example.com: missing") {
		t.Errorf("domain_unverified events %+v", evs)
	}
	dns.AddTXT("example.com", recs[domains.KindSPF].Value)
	if a := get(e.sendKey); a.State != "verified" {
		t.Errorf("verified again: %+v", a)
	}
	if n := len(outboxEvents(t, e.sp, pipeline.EventDomainVerified)); n != 2 {
		t.Errorf("%d domain_verified events, want 2 (verified, unverified, verified again)", n)
	}

	// Tenant scoped.
	if r := e.do("GET", "/v1/domains/example.com", e.otherKey, nil); r.Status != http.StatusNotFound {
		t.Errorf("other tenant GET: %d", r.Status)
	}
	var list struct{ Domains []domainAnswer }
	e.do("GET", "/v1/domains", e.otherKey, nil).json(t, &list)
	if len(list.Domains) != 0 {
		t.Errorf("other tenant lists %+v", list.Domains)
	}
	e.do("GET", "/v1/domains", e.sendKey, nil).json(t, &list)
	if len(list.Domains) != 1 || list.Domains[0].Domain != "example.com" || list.Domains[0].State != "verified" {
		t.Errorf("list %+v", list.Domains)
	}

	if r := e.do("DELETE", "/v1/domains/example.com", e.otherKey, nil); r.Status != http.StatusNotFound {
		t.Errorf("other tenant DELETE: %d", r.Status)
	}
	if r := e.do("DELETE", "/v1/domains/example.com", e.sendKey, nil); r.Status != http.StatusOK {
		t.Errorf("DELETE: %d %s", r.Status, r.Body)
	}
	if r := e.do("GET", "/v1/domains/example.com", e.sendKey, nil); r.Status != http.StatusNotFound {
		t.Errorf("GET after DELETE: %d", r.Status)
	}
	if reg.Keys("example.com") != nil {
		t.Error("a removed domain's key still signs")
	}
	if evs := outboxEvents(t, e.sp, pipeline.EventDomainRemoved); len(evs) != 1 {
		t.Errorf("domain_removed events %+v", evs)
	}
}

// The OpenAPI document describes every domains endpoint.
func TestDomainsOpenAPI(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(openAPI, &doc); err != nil {
		t.Fatal(err)
	}
	for path, methods := range map[string][]string{"/v1/domains": {"get", "post"}, "/v1/domains/{domain}": {"get", "delete"}, "/v1/domains/{domain}/rotate": {"post"}} {
		for _, m := range methods {
			if _, ok := doc.Paths[path][m]; !ok {
				t.Errorf("openapi.json lacks %s %s", m, path)
			}
		}
	}
}
