package httpapi

import (
	"net/http"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/domains"
	"github.com/sluice-mta/sluice/internal/spool"
)

// TestDomainsDelegated: with sluice.dns_server the DKIM records are one
// CNAME per delegated selector, checked as CNAMEs (a TXT record left at
// the name is wrong, with the CNAME as the fix); the first key signs
// under the first selector; POST .../rotate is 202, then 409 while the
// request is pending, 404 for another tenant's or an unknown domain, and
// 404 on a node without the DNS listener.
func TestDomainsDelegated(t *testing.T) {
	e, dns, reg := newDomainsEnv(t, -1)
	if r := e.do("POST", "/v1/domains", e.sendKey, map[string]any{"domain": "plain.example"}); r.Status != http.StatusCreated {
		t.Fatalf("POST: %d %s", r.Status, r.Body)
	}
	if r := e.do("POST", "/v1/domains/plain.example/rotate", e.sendKey, nil); r.Status != http.StatusNotFound {
		t.Errorf("rotate without a DNS listener: %d %s", r.Status, r.Body)
	}
	reg.SetDelegation(&config.DNSServer{Zone: "dkim.relay.test", Selectors: []string{"s1", "s2"}, TTL: time.Second})

	r := e.do("POST", "/v1/domains", e.sendKey, map[string]any{"domain": "my-shop.example"})
	if r.Status != http.StatusCreated {
		t.Fatalf("POST: %d %s", r.Status, r.Body)
	}
	var a domainAnswer
	r.json(t, &a)
	var cn []domains.Status
	for _, s := range a.Records {
		if s.Kind == domains.KindDKIM {
			t.Errorf("a DKIM TXT record with delegation: %+v", s)
		}
		if s.Kind == domains.KindDKIMCNAME {
			cn = append(cn, s)
		}
	}
	if len(cn) != 2 || cn[0].Name != "s1._domainkey.my-shop.example" || cn[0].Value != "s1.my--shop-example.dkim.relay.test" ||
		cn[1].Zone != "s2._domainkey.my-shop.example. 3600 IN CNAME s2.my--shop-example.dkim.relay.test." {
		t.Fatalf("CNAME records %+v", cn)
	}
	if len(a.Keys) != 1 || a.Keys[0].Selector != "s1" || a.Keys[0].State != spool.KeyActive {
		t.Errorf("keys %+v", a.Keys)
	}

	dns.AddCNAME(cn[0].Name, cn[0].Value)
	dns.AddTXT(cn[1].Name, "v=DKIM1; k=rsa; p=OLD")
	r = e.do("GET", "/v1/domains/my-shop.example?fresh=true", e.sendKey, nil)
	r.json(t, &a)
	got := map[string]domains.Status{}
	for _, s := range a.Records {
		if s.Kind == domains.KindDKIMCNAME {
			got[s.Selector] = s
		}
	}
	if got["s1"].State != domains.Verified {
		t.Errorf("s1 CNAME: %+v", got["s1"])
	}
	if s := got["s2"]; s.State != domains.Wrong || s.Fix != cn[1].Zone || len(s.Found) != 1 {
		t.Errorf("s2 with a TXT record: %+v", s)
	}

	if r := e.do("POST", "/v1/domains/my-shop.example/rotate", e.sendKey, nil); r.Status != http.StatusAccepted {
		t.Fatalf("rotate: %d %s", r.Status, r.Body)
	}
	if d, _ := reg.Get("acme", "my-shop.example"); d == nil || d.RotateRequested.IsZero() {
		t.Errorf("the request is not stored: %+v", d)
	}
	if r := e.do("POST", "/v1/domains/my-shop.example/rotate", e.sendKey, nil); r.Status != http.StatusConflict || r.errorOf(t).Field != "domain" {
		t.Errorf("rotate again: %d %s", r.Status, r.Body)
	}
	for _, c := range []struct{ key, path string }{{e.otherKey, "/v1/domains/my-shop.example/rotate"}, {e.sendKey, "/v1/domains/none.example/rotate"}} {
		if r := e.do("POST", c.path, c.key, nil); r.Status != http.StatusNotFound {
			t.Errorf("%s: %d %s", c.path, r.Status, r.Body)
		}
	}
	if r := e.do("GET", "/v1/domains/my-shop.example/rotate", e.sendKey, nil); r.Status != http.StatusMethodNotAllowed {
		t.Errorf("GET rotate: %d", r.Status)
	}

	// DELETE cancels the rotation under way (here a request not started
	// yet); then there is none to cancel, and POST is accepted again.
	if r := e.do("DELETE", "/v1/domains/my-shop.example/rotate", e.otherKey, nil); r.Status != http.StatusNotFound {
		t.Errorf("cancel by another tenant: %d %s", r.Status, r.Body)
	}
	if r := e.do("DELETE", "/v1/domains/my-shop.example/rotate", e.sendKey, nil); r.Status != http.StatusOK {
		t.Fatalf("cancel: %d %s", r.Status, r.Body)
	}
	if d, _ := reg.Get("acme", "my-shop.example"); d == nil || !d.RotateRequested.IsZero() {
		t.Errorf("the request is still stored: %+v", d)
	}
	if r := e.do("DELETE", "/v1/domains/my-shop.example/rotate", e.sendKey, nil); r.Status != http.StatusConflict || r.errorOf(t).Field != "domain" {
		t.Errorf("cancel again: %d %s", r.Status, r.Body)
	}
	if r := e.do("POST", "/v1/domains/my-shop.example/rotate", e.sendKey, nil); r.Status != http.StatusAccepted {
		t.Errorf("rotate after cancel: %d %s", r.Status, r.Body)
	}
}
