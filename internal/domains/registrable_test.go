package domains

import (
	"errors"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
)

// TestRegistrable: public suffixes, IP literals, the node's host name and
// the DNS listener's zone are refused with a NotRegistrableError; names
// under a public suffix are registered.
func TestRegistrable(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	r, sp := shopRegistry(t, &config.DNSServer{Zone: "DKIM.Relay.Example.", Selectors: []string{"s1"}, TTL: time.Minute}, &now)
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
	if all, _ := sp.ListDomains(); len(all) != 5 {
		t.Errorf("%d domains registered, want 5 (with shop.example)", len(all))
	}
}
