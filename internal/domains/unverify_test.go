package domains

import (
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/dkim"
	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestLosingVerified: a verified domain keeps its status when a record
// it does not sign or send with goes (the CNAME of a selector no key
// uses, the DMARC record); it loses it, with one domain_unverified event
// naming the record, when its active key's CNAME goes, and the refusal
// then says it was verified and what is wrong.
func TestLosingVerified(t *testing.T) {
	srv := dnstest.NewServer(t)
	res, err := dnsx.New(dnsx.Options{Server: srv.Addr(), CacheSize: -1, Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	sp, err := spool.Open(filepath.Join(t.TempDir(), "spool"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pol := config.DefaultDomains()
	pol.DKIMAlgo = dkim.AlgoEd25519
	pol.RequireVerified = true
	pol.SPFIPs = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	r, err := NewRegistry(sp, res, pol)
	if err != nil {
		t.Fatal(err)
	}
	r.SetDelegation(&config.DNSServer{Zone: "dkim.relay.test", Selectors: []string{"s1", "s2", "s3"}, TTL: 5 * time.Minute})
	d, err := r.Add("acme", "shop.example")
	if err != nil {
		t.Fatal(err)
	}
	recs, err := r.Records(d)
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range recs {
		switch rec.Type {
		case "CNAME":
			srv.AddCNAME(rec.Name, rec.Value)
		case "TXT":
			srv.AddTXT(rec.Name, rec.Value)
		default:
			t.Fatalf("record %+v", rec)
		}
	}
	check := func() {
		t.Helper()
		if _, err := r.Check(context.Background(), d, true); err != nil {
			t.Fatal(err)
		}
	}
	check()
	if d.Verified.IsZero() {
		t.Fatalf("not verified with every record published")
	}
	srv.Remove("s3._domainkey.shop.example")
	srv.Remove("_dmarc.shop.example")
	check()
	if d.Verified.IsZero() {
		t.Error("an unused selector's CNAME or DMARC going cost the domain its verified status")
	}
	if n := unverifiedEvents(t, sp); len(n) != 0 {
		t.Errorf("events %v", n)
	}

	srv.Remove("s1._domainkey.shop.example")
	check()
	if !d.Verified.IsZero() || d.Unverified.IsZero() {
		t.Fatalf("still verified without the active key's CNAME: %+v", d)
	}
	evs := unverifiedEvents(t, sp)
	if len(evs) != 1 || !strings.Contains(evs[0], "s1._domainkey.shop.example: missing") || strings.Contains(evs[0], "s3.") || strings.Contains(evs[0], "dmarc") {
		t.Errorf("domain_unverified events %q", evs)
	}
	why, err := r.SenderRefusal("acme", "shop.example")
	if err != nil || !strings.Contains(why, "was verified but is no longer") || !strings.Contains(why, "s1._domainkey.shop.example: missing") ||
		!strings.Contains(why, "sluice domain verify shop.example") {
		t.Errorf("refusal %q %v", why, err)
	}
	check() // still unverified: no second event
	if n := unverifiedEvents(t, sp); len(n) != 1 {
		t.Errorf("%d domain_unverified events", len(n))
	}

	for _, rec := range recs {
		if rec.Selector == "s1" || rec.Selector == "s3" {
			srv.AddCNAME(rec.Name, rec.Value)
		}
	}
	srv.AddTXT("_dmarc.shop.example", "v=DMARC1; p=none")
	check()
	if d.Verified.IsZero() || !d.Unverified.IsZero() || d.UnverifiedWhy != "" {
		t.Errorf("verified again: %+v", d)
	}
	if why, _ := r.SenderRefusal("acme", "shop.example"); why != "" {
		t.Errorf("refused when verified: %q", why)
	}
}

// unverifiedEvents returns the metadata.records of domain_unverified
// events.
func unverifiedEvents(t *testing.T, sp *spool.Spool) []string {
	var out []string
	for _, ev := range outboxEvents(t, sp, pipeline.EventDomainUnverified) {
		if ev.Metadata["domain"] != "shop.example" || ev.Tenant != "acme" {
			t.Errorf("event %+v", ev)
		}
		out = append(out, ev.Metadata["records"])
	}
	return out
}
