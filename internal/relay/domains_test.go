package relay

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/domains"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestRequireVerifiedSender: with require_verified, a tenant's envelope
// sender at a domain it registered and that is not verified is refused
// at MAIL with 550 5.7.1 (a SenderError naming the envelope); verified,
// unregistered, another tenant's domains and the null sender pass; with
// the policy off nothing is refused.
func TestRequireVerifiedSender(t *testing.T) {
	r, sp := setup(t)
	pol := config.DefaultDomains()
	pol.RequireVerified = true
	reg, err := domains.NewRegistry(sp, nil, pol)
	if err != nil {
		t.Fatal(err)
	}
	r.domains = reg
	if _, err := reg.Add("acme", "brand.test"); err != nil {
		t.Fatal(err)
	}
	d, err := reg.Add("acme", "verified.test")
	if err != nil {
		t.Fatal(err)
	}
	d.Verified = time.Now()
	if err := sp.PutDomain(d, nil); err != nil {
		t.Fatal(err)
	}
	mail := func(tenant, sender string) error {
		sess := r.NewSession(&pipeline.Conn{Source: pipeline.SourceSMTP, RelayNetwork: true,
			Identity: &pipeline.Identity{Name: "app", Tenant: tenant}})
		_, err := sess.Begin(context.Background(), sender, nil, nil)
		return err
	}
	err = mail("acme", "app@Brand.Test")
	var se *SenderError
	if !errors.As(err, &se) || se.Field != FieldEnvelope || pipeline.Reply(err).Code != 550 ||
		pipeline.Reply(err).Enhanced != (pipeline.EnhancedCode{5, 7, 1}) {
		t.Fatalf("unverified domain: %v", err)
	}
	for _, c := range []struct{ tenant, sender string }{
		{"acme", "app@verified.test"}, {"acme", "app@other.test"}, {"other", "app@brand.test"}, {"acme", ""},
	} {
		if err := mail(c.tenant, c.sender); err != nil {
			t.Errorf("tenant %q sender %q: %v", c.tenant, c.sender, err)
		}
	}
	pol.RequireVerified = false
	reg.SetPolicy(pol)
	if err := mail("acme", "app@brand.test"); err != nil {
		t.Errorf("policy off: %v", err)
	}
}
