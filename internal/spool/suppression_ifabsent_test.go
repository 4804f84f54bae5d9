package spool

import (
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

// TestAddSuppressionIfAbsent: an address already listed keeps its entry
// (a hard bounce stays a hard bounce) and no event is written for it.
func TestAddSuppressionIfAbsent(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	s.SetSuppressionPolicy(SuppressionPolicy{Enabled: true, Classes: defaultClasses})
	if _, err := s.AddSuppression(&Suppression{Tenant: "acme", Address: "bob@example.org", Reason: "hard bounce", Source: SuppressionBounce}); err != nil {
		t.Fatal(err)
	}
	unsub := &pipeline.Event{Type: pipeline.EventUnsubscribed, Tenant: "acme", Recipient: "bob@example.org"}
	prev, err := s.AddSuppressionIfAbsent(&Suppression{Tenant: "acme", Address: "bob@example.org", Reason: "unsubscribed", Source: SuppressionUnsubscribe}, unsub)
	if err != nil || prev == nil || prev.Source != SuppressionBounce {
		t.Fatalf("on a listed address: %+v, %v", prev, err)
	}
	if e, _ := s.Suppressed("acme", "bob@example.org"); e == nil || e.Source != SuppressionBounce {
		t.Fatalf("the entry was replaced: %+v", e)
	}
	if n := len(outboxOf(t, s, pipeline.EventSuppressionAdded)); n != 1 {
		t.Fatalf("%d suppression_added events, want 1", n)
	}
	if n := len(outboxOf(t, s, pipeline.EventUnsubscribed)); n != 0 {
		t.Fatalf("%d unsubscribed events, want 0", n)
	}
	prev, err = s.AddSuppressionIfAbsent(&Suppression{Tenant: "acme", Address: "carol@example.org", Source: SuppressionUnsubscribe}, unsub)
	if err != nil || prev != nil {
		t.Fatalf("on a new address: %+v, %v", prev, err)
	}
	if n := len(outboxOf(t, s, pipeline.EventUnsubscribed)); n != 1 {
		t.Fatalf("%d unsubscribed events, want 1", n)
	}
}
