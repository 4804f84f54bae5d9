package domains

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/dkim"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

func keyStates(t *testing.T, r *Registry, domain string) map[string]string {
	t.Helper()
	d, err := r.sp.GetDomain(domain)
	if err != nil || d == nil {
		t.Fatalf("domain %s: %v", domain, err)
	}
	out := map[string]string{}
	for _, k := range d.Keys {
		out[k.Selector] = k.State
	}
	return out
}

func same(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestRotationSteps drives the state machine with a clock of its own:
// a due rotation publishes a pending key under the next selector; it
// stays pending while a resolver does not return it or the TTL has not
// passed; then it signs and the old key retires, is revoked after the
// overlap (empty p= published) and removed after remove_after; the
// state survives reopening the spool; the next rotation reuses s1.
func TestRotationSteps(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	sp, err := spool.Open(dir, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pol := config.DefaultDomains()
	pol.DKIMAlgo = dkim.AlgoEd25519
	dnsCfg := &config.DNSServer{Zone: "dkim.relay.test", Selectors: []string{"s1", "s2"}, TTL: 5 * time.Minute}
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	open := func() *Registry {
		r, err := NewRegistry(sp, nil, pol)
		if err != nil {
			t.Fatal(err)
		}
		r.SetDelegation(dnsCfg)
		r.now = func() time.Time { return now }
		return r
	}
	r := open()
	if _, err := r.Add("acme", "shop.example"); err != nil {
		t.Fatal(err)
	}
	visible := false
	var asked []string
	rot := &Rotation{DKIMRotation: config.DKIMRotation{Every: 24 * time.Hour, Overlap: time.Hour, RemoveAfter: 2 * time.Hour}, DNS: dnsCfg,
		Published: func(_ context.Context, name, wantP string) error {
			asked = append(asked, name)
			if !visible {
				return errors.New("not yet")
			}
			if v, found, _ := r.View().Lookup("shop-example", "s2"); !found || tag(v, "p") != wantP {
				t.Errorf("the key checked is not the one published: %q", v)
			}
			return nil
		}}
	step := func(want map[string]string) {
		t.Helper()
		if err := r.Rotate(context.Background(), rot); err != nil {
			t.Fatal(err)
		}
		if got := keyStates(t, r, "shop.example"); !same(got, want) {
			t.Fatalf("at %s: keys %v, want %v", now.Format(time.TimeOnly), got, want)
		}
	}
	step(map[string]string{"s1": "active"}) // not due
	now = now.Add(24 * time.Hour)
	step(map[string]string{"s1": "active", "s2": "pending"})
	if r.Keys("shop.example")[0].Selector != "s1" {
		t.Error("a pending key signs")
	}
	if _, found, _ := r.View().Lookup("shop-example", "s2"); !found {
		t.Error("the pending key is not published")
	}
	visible = true
	step(map[string]string{"s1": "active", "s2": "pending"}) // the TTL has not passed
	if len(asked) != 0 {
		t.Errorf("resolvers asked before the TTL passed: %v", asked)
	}
	now = now.Add(5 * time.Minute)
	visible = false
	step(map[string]string{"s1": "active", "s2": "pending"}) // a resolver lacks it
	if len(asked) != 1 || asked[0] != "s2._domainkey.shop.example" {
		t.Errorf("asked %v", asked)
	}
	visible = true
	step(map[string]string{"s1": "retired", "s2": "active"})
	if ks := r.Keys("shop.example"); len(ks) != 1 || ks[0].Selector != "s2" {
		t.Errorf("signing keys %+v", ks)
	}

	// Restart: the state is in the spool.
	r = open()
	now = now.Add(time.Hour)
	step(map[string]string{"s1": "revoked", "s2": "active"})
	if v, found, _ := r.View().Lookup("shop-example", "s1"); !found || v != "v=DKIM1; k=ed25519; p=" {
		t.Errorf("revoked key published as %q", v)
	}
	now = now.Add(2 * time.Hour)
	step(map[string]string{"s2": "active"})
	if _, found, exists := r.View().Lookup("shop-example", "s1"); found || !exists {
		t.Error("a removed key is still published")
	}

	// A manual request starts the next rotation at once, under s1.
	if _, err := r.RequestRotation("acme", "shop.example"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.RequestRotation("acme", "shop.example"); !errors.Is(err, ErrRotating) {
		t.Errorf("second request: %v", err)
	}
	if d, _ := r.RequestRotation("other", "shop.example"); d != nil {
		t.Error("another tenant rotated the domain")
	}
	step(map[string]string{"s1": "pending", "s2": "active"})
	if d, _ := r.sp.GetDomain("shop.example"); !d.RotateRequested.IsZero() {
		t.Error("the request is still pending after the rotation started")
	}
	evs := 0
	for _, typ := range []string{"dkim_key_pending", "dkim_key_active", "dkim_key_revoked", "dkim_key_removed"} {
		if n := countEvents(t, sp, typ); n == 0 {
			t.Errorf("no %s event", typ)
		} else {
			evs += n
		}
	}
	if evs != 5 {
		t.Errorf("%d dkim_key_* events, want 5 (pending twice)", evs)
	}
}

func TestZoneLabel(t *testing.T) {
	long := "a-very-long-subdomain-name-for-testing.another-long-label-here.example.com"
	for in, want := range map[string]string{
		"customer.example":      "customer-example",
		"Customer.Example.":     "customer-example",
		"my-shop.example":       "my--shop-example",
		"my.shop-example":       "my-shop--example",
		"xn--bcher-kva.example": "xn----bcher--kva-example",
	} {
		if got := ZoneLabel(in); got != want {
			t.Errorf("ZoneLabel(%q) = %q, want %q", in, got, want)
		}
	}
	if l := ZoneLabel(long); len(l) != 35 || l[:3] != "h--" || l == ZoneLabel(long+"x") {
		t.Errorf("long: %q", l)
	}
}

func countEvents(t *testing.T, sp *spool.Spool, typ string) int {
	t.Helper()
	evs, err := sp.ReadOutbox(0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range evs {
		var ev pipeline.Event
		if err := json.Unmarshal(e.JSON, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Type == typ {
			if ev.Metadata["domain"] != "shop.example" || ev.Metadata["selector"] == "" || ev.Tenant != "acme" {
				t.Errorf("%s event %+v", typ, ev)
			}
			testutil.ValidateEvent(t, e.JSON)
			n++
		}
	}
	return n
}

// removedReasons returns the reason metadata of shop.example's
// dkim_key_removed events, in order.
func removedReasons(t *testing.T, sp *spool.Spool) []string {
	var out []string
	for _, ev := range outboxEvents(t, sp, pipeline.EventDKIMKeyRemoved) {
		out = append(out, ev.Metadata["selector"]+":"+ev.Metadata["reason"])
	}
	return out
}

// outboxEvents returns the events of type typ in sp's outbox, each
// validated against the event schema.
func outboxEvents(t *testing.T, sp *spool.Spool, typ string) []pipeline.Event {
	t.Helper()
	evs, err := sp.ReadOutbox(0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []pipeline.Event
	for _, e := range evs {
		var ev pipeline.Event
		if err := json.Unmarshal(e.JSON, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Type == typ {
			testutil.ValidateEvent(t, e.JSON)
			out = append(out, ev)
		}
	}
	return out
}

// shopRegistry is a registry on a new spool, delegating to dnsCfg, with
// the clock *now and shop.example registered by tenant acme.
func shopRegistry(t *testing.T, dnsCfg *config.DNSServer, now *time.Time) (*Registry, *spool.Spool) {
	t.Helper()
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
	r.SetDelegation(dnsCfg)
	r.now = func() time.Time { return *now }
	if _, err := r.Add("acme", "shop.example"); err != nil {
		t.Fatal(err)
	}
	return r, sp
}

// TestRotationSelectorsChanged: a key pending under a selector the
// operator removed from sluice.dns_server.selectors is abandoned at the
// next pass (with a dkim_key_removed event), so rotation carries on under
// the new selectors instead of answering 409 forever; CancelRotation
// drops a pending key on request.
func TestRotationSelectorsChanged(t *testing.T) {
	dnsCfg := &config.DNSServer{Zone: "dkim.relay.test", Selectors: []string{"k1", "k2"}, TTL: 5 * time.Minute}
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	r, sp := shopRegistry(t, dnsCfg, &now)
	rot := &Rotation{DKIMRotation: config.DKIMRotation{Overlap: time.Hour, RemoveAfter: time.Hour}, DNS: dnsCfg,
		Published: func(context.Context, string, string) error { return errors.New("not visible") }}
	step := func(want map[string]string) {
		t.Helper()
		if err := r.Rotate(context.Background(), rot); err != nil {
			t.Fatal(err)
		}
		if got := keyStates(t, r, "shop.example"); !same(got, want) {
			t.Fatalf("keys %v, want %v", got, want)
		}
	}
	if _, err := r.RequestRotation("acme", "shop.example"); err != nil {
		t.Fatal(err)
	}
	step(map[string]string{"k1": "active", "k2": "pending"})

	// The operator renames the selectors (and restarts the node).
	dnsCfg.Selectors = []string{"s1", "s2", "s3"}
	now = now.Add(time.Hour)
	step(map[string]string{"k1": "active"})
	if got := removedReasons(t, sp); len(got) != 1 || got[0] != "k2:selector_unconfigured" {
		t.Errorf("dkim_key_removed events %v", got)
	}
	if _, found, _ := r.View().Lookup("shop-example", "k2"); found {
		t.Error("the abandoned key is still published")
	}
	if _, err := r.RequestRotation("acme", "shop.example"); err != nil {
		t.Fatalf("rotate after the selectors changed: %v", err)
	}
	step(map[string]string{"k1": "active", "s1": "pending"})

	// Cancel: the pending key goes, the active one keeps signing.
	if d, err := r.CancelRotation("other", "shop.example"); d != nil || err != nil {
		t.Errorf("another tenant cancelled: %v %v", d, err)
	}
	if _, err := r.CancelRotation("acme", "shop.example"); err != nil {
		t.Fatal(err)
	}
	if got := keyStates(t, r, "shop.example"); !same(got, map[string]string{"k1": "active"}) {
		t.Errorf("after cancel: %v", got)
	}
	if _, err := r.CancelRotation("acme", "shop.example"); !errors.Is(err, ErrNotRotating) {
		t.Errorf("second cancel: %v", err)
	}
	if got := removedReasons(t, sp); len(got) != 2 || got[1] != "s1:cancelled" {
		t.Errorf("dkim_key_removed events %v", got)
	}
	if ks := r.Keys("shop.example"); len(ks) != 1 || ks[0].Selector != "k1" {
		t.Errorf("signing keys %+v", ks)
	}
	// A queued request (no key yet) is cancelled too.
	if _, err := r.RequestRotation("acme", "shop.example"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.CancelRotation("acme", "shop.example"); err != nil {
		t.Fatal(err)
	}
	step(map[string]string{"k1": "active"})
}

// TestRotationReRegistered: a domain removed and registered again while
// a rotation pass runs does not inherit the old registration's queued
// rotation (transition compares the Created time, not only the name).
func TestRotationReRegistered(t *testing.T) {
	dnsCfg := &config.DNSServer{Zone: "dkim.relay.test", Selectors: []string{"s1", "s2"}, TTL: 5 * time.Minute}
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	r, _ := shopRegistry(t, dnsCfg, &now)
	if _, err := r.RequestRotation("acme", "shop.example"); err != nil {
		t.Fatal(err)
	}
	// The pass has listed the domain when it reads the clock: remove and
	// register it again there, a minute later.
	swap := true
	r.now = func() time.Time {
		if swap {
			swap = false
			if _, err := r.Remove("acme", "shop.example"); err != nil {
				t.Fatal(err)
			}
			now = now.Add(time.Minute)
			if _, err := r.Add("acme", "shop.example"); err != nil {
				t.Fatal(err)
			}
		}
		return now
	}
	rot := &Rotation{DKIMRotation: config.DKIMRotation{Overlap: time.Hour, RemoveAfter: time.Hour}, DNS: dnsCfg}
	if err := r.Rotate(context.Background(), rot); err != nil {
		t.Fatal(err)
	}
	if swap {
		t.Fatal("the clock was not read during the pass")
	}
	if got := keyStates(t, r, "shop.example"); !same(got, map[string]string{"s1": "active"}) {
		t.Errorf("the new registration inherited the rotation: keys %v", got)
	}
}
