package domains

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/dkim"
	"github.com/sluice-mta/sluice/internal/spool"
)

// TestRegistrable: public suffixes, IP literals, the node's host name and
// the DNS listener's zone are refused with a NotRegistrableError; names
// under a public suffix are registered.
func TestRegistrable(t *testing.T) {
	sp, err := spool.Open(filepath.Join(t.TempDir(), "spool"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pol := config.DefaultDomains()
	pol.DKIMAlgo = dkim.AlgoEd25519
	r, err := NewRegistry(sp, nil, pol)
	if err != nil {
		t.Fatal(err)
	}
	r.SetDelegation(&config.DNSServer{Zone: "DKIM.Relay.Example.", Selectors: []string{"s1"}, TTL: time.Minute})
	r.SetNodeNames("MX1.relay.example")
	for _, d := range []string{"com", "co.uk", "github.io", "192.0.2.1", "[192.0.2.1]", "2001:db8::1", "[IPv6:2001:db8::1]",
		"mx1.relay.example", "dkim.relay.example", "x.dkim.relay.example"} {
		_, err := r.Add("acme", d)
		var nr *NotRegistrableError
		if !errors.As(err, &nr) {
			t.Errorf("Add(%q): %v, want NotRegistrableError", d, err)
		}
	}
	for _, d := range []string{"shop.co.uk", "me.github.io", "relay.example", "mx2.relay.example"} {
		if _, err := r.Add("acme", d); err != nil {
			t.Errorf("Add(%q): %v", d, err)
		}
	}
	if all, _ := sp.ListDomains(); len(all) != 4 {
		t.Errorf("%d domains registered, want 4", len(all))
	}
}
