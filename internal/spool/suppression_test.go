package spool

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

var defaultClasses = []string{"InvalidRecipient", "InactiveMailbox", "BadDomain"}

// outboxOf returns the outbox events of type typ, decoded.
func outboxOf(t *testing.T, s *Spool, typ string) []pipeline.Event {
	t.Helper()
	var out []pipeline.Event
	for _, oe := range readAll(t, s, 0) {
		if oe.Type != typ {
			continue
		}
		var ev pipeline.Event
		if err := json.Unmarshal(oe.JSON, &ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

func TestCanonicalAddress(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"Bob@Example.ORG", "Bob@example.org"},
		{"bob@example.org", "bob@example.org"},
		{`"bob"@EXAMPLE.org`, "bob@example.org"},
		{`"a b"@x.test`, `"a b"@x.test`},
	} {
		got, err := CanonicalAddress(c.in)
		if err != nil || got != c.want {
			t.Errorf("CanonicalAddress(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "nodomain", "a@", "a\r\nb@x.test"} {
		if _, err := CanonicalAddress(bad); err == nil {
			t.Errorf("CanonicalAddress(%q) accepted", bad)
		}
	}
}

func TestSuppressionAddGetRemove(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	s.SetSuppressionPolicy(SuppressionPolicy{Enabled: true, Classes: defaultClasses})

	if _, err := s.AddSuppression(&Suppression{Tenant: "acme", Address: "not an address", Source: SuppressionAPI}); err == nil {
		t.Error("AddSuppression took a malformed address")
	}
	prev, err := s.AddSuppression(&Suppression{Tenant: "acme", Address: "Bob@EXAMPLE.org", Reason: "asked to stop", Source: SuppressionAPI})
	if err != nil || prev != nil {
		t.Fatalf("add: %v, %v", prev, err)
	}
	e, err := s.Suppressed("acme", "Bob@example.org")
	if err != nil || e == nil || e.Reason != "asked to stop" || e.Source != SuppressionAPI || e.Created.IsZero() {
		t.Fatalf("Suppressed = %+v, %v", e, err)
	}
	// Tenants are separate; the local part's case matters.
	for _, c := range []struct{ tenant, addr string }{{"other", "Bob@example.org"}, {"", "Bob@example.org"}, {"acme", "bob@example.org"}} {
		if e, err := s.Suppressed(c.tenant, c.addr); err != nil || e != nil {
			t.Errorf("Suppressed(%q, %q) = %+v, %v; want none", c.tenant, c.addr, e, err)
		}
	}
	// Disabled: not enforced, still readable.
	s.SetSuppressionPolicy(SuppressionPolicy{Enabled: false})
	if e, _ := s.Suppressed("acme", "Bob@example.org"); e != nil {
		t.Error("a disabled list still suppresses")
	}
	if e, _ := s.GetSuppression("acme", "Bob@example.org"); e == nil {
		t.Error("GetSuppression does not see the entry of a disabled list")
	}
	s.SetSuppressionPolicy(SuppressionPolicy{Enabled: true, Classes: defaultClasses})

	// Adding again replaces and reports the previous entry.
	prev, err = s.AddSuppression(&Suppression{Tenant: "acme", Address: "Bob@example.org", Reason: "again", Source: SuppressionCLI})
	if err != nil || prev == nil || prev.Reason != "asked to stop" {
		t.Fatalf("re-add: %+v, %v", prev, err)
	}
	rm, err := s.RemoveSuppression("acme", "Bob@example.org", SuppressionAPI)
	if err != nil || rm == nil || rm.Reason != "again" {
		t.Fatalf("remove: %+v, %v", rm, err)
	}
	if e, _ := s.Suppressed("acme", "Bob@example.org"); e != nil {
		t.Error("still suppressed after removal")
	}
	if rm, err := s.RemoveSuppression("acme", "Bob@example.org", SuppressionAPI); err != nil || rm != nil {
		t.Errorf("second remove = %+v, %v; want nil, nil", rm, err)
	}

	added := outboxOf(t, s, pipeline.EventSuppressionAdded)
	removed := outboxOf(t, s, pipeline.EventSuppressionRemoved)
	if len(added) != 2 || len(removed) != 1 {
		t.Fatalf("events: %d added, %d removed; want 2, 1", len(added), len(removed))
	}
	if a := added[0]; a.Recipient != "Bob@example.org" || a.Tenant != "acme" || a.Source != SuppressionAPI || a.Metadata["reason"] != "asked to stop" || a.EventID == "" {
		t.Errorf("suppression_added event: %+v", a)
	}
	if r := removed[0]; r.Recipient != "Bob@example.org" || r.Source != SuppressionAPI || r.Metadata["reason"] != "again" {
		t.Errorf("suppression_removed event: %+v", r)
	}
}

func TestSuppressionList(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	const n = 25
	for i := n - 1; i >= 0; i-- {
		if _, err := s.AddSuppression(&Suppression{Tenant: "t1", Address: fmt.Sprintf("u%02d@x.test", i), Source: SuppressionAPI}); err != nil {
			t.Fatal(err)
		}
	}
	// Neighbouring tenants, one a prefix of the other, must not leak in.
	for _, tn := range []string{"t", "t10", ""} {
		if _, err := s.AddSuppression(&Suppression{Tenant: tn, Address: "zz@x.test", Source: SuppressionAPI}); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	cursor, pages := "", 0
	for {
		p, err := s.ListSuppressions("t1", cursor, 10)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, e := range p.Entries {
			if e.Tenant != "t1" {
				t.Fatalf("entry of tenant %q in t1's list", e.Tenant)
			}
			got = append(got, e.Address)
		}
		if p.Next == "" {
			break
		}
		cursor = p.Next
	}
	if len(got) != n || pages != 3 {
		t.Fatalf("listed %d entries in %d pages; want %d in 3", len(got), pages, n)
	}
	for i, a := range got {
		if want := fmt.Sprintf("u%02d@x.test", i); a != want {
			t.Fatalf("entry %d = %q; want %q (address order)", i, a, want)
		}
	}
	// An exact multiple of the page size ends without an empty page.
	p, err := s.ListSuppressions("t", "", 1)
	if err != nil || len(p.Entries) != 1 || p.Next != "" {
		t.Errorf("tenant t: %+v, %v; want one entry and no next cursor", p, err)
	}
	if _, err := s.ListSuppressions("t1", "!!not base64!!", 10); !errors.Is(err, ErrBadCursor) {
		t.Errorf("bad cursor: %v; want ErrBadCursor", err)
	}
	if p, err := s.ListSuppressions("nobody", "", 10); err != nil || len(p.Entries) != 0 || p.Entries == nil {
		t.Errorf("empty tenant: %+v, %v; want an empty, non-nil list", p, err)
	}
}

// bounce commits a "bounced" outcome the way the queue does.
func bounce(t *testing.T, s *Spool, tenant, rcpt, class string, resp *pipeline.Response) *pipeline.Event {
	t.Helper()
	id := accept(t, s, 1)
	b := s.NewBatch()
	b.DeleteRecipient(id, 0)
	ev := &pipeline.Event{Type: pipeline.EventBounced, MessageID: id, Recipient: rcpt, Sender: "a@x.test", Tenant: tenant,
		BounceClass: class, Response: resp}
	b.AddEvent(ev)
	if err := b.Commit(false); err != nil {
		t.Fatal(err)
	}
	return ev
}

func TestSuppressionFedByBounces(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	userUnknown := &pipeline.Response{Code: 550, Enhanced: "5.1.1", Text: "No such user"}
	full := &pipeline.Response{Code: 552, Enhanced: "5.2.2", Text: "Mailbox full"}

	// Disabled (no policy set yet): nothing is added.
	bounce(t, s, "acme", "gone@y.test", "InvalidRecipient", userUnknown)
	if e, _ := s.GetSuppression("acme", "gone@y.test"); e != nil {
		t.Fatal("a bounce was suppressed while the list is disabled")
	}
	s.SetSuppressionPolicy(SuppressionPolicy{Enabled: true, Classes: defaultClasses})

	cases := []struct {
		name, rcpt, class string
		resp              *pipeline.Response
		want              string // class of the entry; "" for none
	}{
		{"classified", "a@y.test", "InactiveMailbox", full, "InactiveMailbox"},
		{"class not suppressing", "b@y.test", "QuotaIssues", full, ""},
		{"invalid recipient", "c@y.test", "InvalidRecipient", userUnknown, "InvalidRecipient"},
		{"unclassified", "e@y.test", "Uncategorized", userUnknown, ""},
		{"domain case", "f@Y.TEST", "BadDomain", userUnknown, "BadDomain"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ev := bounce(t, s, "acme", c.rcpt, c.class, c.resp)
			addr, _ := CanonicalAddress(c.rcpt)
			e, err := s.GetSuppression("acme", addr)
			if err != nil {
				t.Fatal(err)
			}
			if c.want == "" {
				if e != nil {
					t.Fatalf("suppressed: %+v", e)
				}
				return
			}
			if e == nil {
				t.Fatal("not suppressed")
			}
			if e.Class != c.want || e.Source != SuppressionBounce || e.MessageID != ev.MessageID || e.EventID == "" || e.EventID != ev.EventID {
				t.Errorf("entry %+v; want class %s, source bounce, message %s, event %s", e, c.want, ev.MessageID, ev.EventID)
			}
			if wantReason := fmt.Sprintf("%d %s %s", c.resp.Code, c.resp.Enhanced, c.resp.Text); e.Reason != wantReason {
				t.Errorf("reason %q; want %q", e.Reason, wantReason)
			}
		})
	}
	added := outboxOf(t, s, pipeline.EventSuppressionAdded)
	if len(added) != 3 {
		t.Fatalf("%d suppression_added events; want 3", len(added))
	}
	// The history of the bounced message holds the bounce and its
	// suppression (one batch).
	first := added[0]
	if first.Source != SuppressionBounce || first.BounceClass != "InactiveMailbox" || first.Metadata["event_id"] == "" || first.Response == nil {
		t.Errorf("suppression_added event of a bounce: %+v", first)
	}
	hist, err := s.History(first.MessageID)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, h := range hist {
		types = append(types, h.Type)
	}
	if len(types) != 3 || types[1] != pipeline.EventBounced || types[2] != pipeline.EventSuppressionAdded {
		t.Errorf("history of the bounced message: %v; want received, bounced, suppression_added", types)
	}

	// The message's status still says bounced.
	st, err := s.Status(first.MessageID)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range st.Recipients {
		if r.Address == "a@y.test" && r.State != StateBounced {
			t.Errorf("status of the bounced recipient: %s; want bounced", r.State)
		}
	}

	// A second hard bounce keeps the first entry and emits nothing.
	before, _ := s.GetSuppression("acme", "a@y.test")
	bounce(t, s, "acme", "a@y.test", "InvalidRecipient", userUnknown)
	after, _ := s.GetSuppression("acme", "a@y.test")
	if after.EventID != before.EventID || after.Class != "InactiveMailbox" {
		t.Errorf("a second bounce replaced the entry: %+v", after)
	}
	if n := len(outboxOf(t, s, pipeline.EventSuppressionAdded)); n != 3 {
		t.Errorf("%d suppression_added events after a repeat bounce; want still 3", n)
	}
	// Another tenant's bounce is its own.
	bounce(t, s, "", "a@y.test", "InvalidRecipient", userUnknown)
	if e, _ := s.Suppressed("", "a@y.test"); e == nil || e.Class != "InvalidRecipient" {
		t.Errorf("tenant \"\": %+v; want its own entry", e)
	}
}

// BenchmarkSuppressed measures the RCPT-time lookup (a Pebble point read)
// in a list of 100,000 entries: a miss (the common case) and a hit.
func BenchmarkSuppressed(b *testing.B) {
	s := open(b, b.TempDir())
	defer s.Close()
	s.SetSuppressionPolicy(SuppressionPolicy{Enabled: true})
	const n = 100_000
	for i := 0; i < n; i += 1000 {
		bt := s.NewBatch()
		for j := i; j < i+1000; j++ {
			e := &Suppression{Tenant: "acme", Address: fmt.Sprintf("user%06d@example.org", j), Source: SuppressionAPI, Reason: "test"}
			v, _ := json.Marshal(e)
			_ = bt.b.Set(suppKey(e.Tenant, e.Address), v, nil)
			s.supp.filter.add(suppKey(e.Tenant, e.Address))
		}
		if err := bt.Commit(false); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.db.Flush(); err != nil {
		b.Fatal(err)
	}
	b.Run("miss", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			// Interleaved with the entries, as a real miss is.
			e, err := s.Suppressed("acme", fmt.Sprintf("user%06dx@example.org", (i*7919)%n))
			if err != nil || e != nil {
				b.Fatal(e, err)
			}
		}
	})
	b.Run("hit", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			e, err := s.Suppressed("acme", fmt.Sprintf("user%06d@example.org", (i*7919)%n))
			if err != nil || e == nil {
				b.Fatal(e, err)
			}
		}
	})
	b.Run("miss-without-filter", func(b *testing.B) {
		s.supp.filter.loaded.Store(false)
		defer s.supp.filter.loaded.Store(true)
		for i := 0; i < b.N; i++ {
			e, err := s.Suppressed("acme", fmt.Sprintf("user%06dx@example.org", (i*7919)%n))
			if err != nil || e != nil {
				b.Fatal(e, err)
			}
		}
	})
	b.Run("disabled", func(b *testing.B) {
		s.SetSuppressionPolicy(SuppressionPolicy{})
		defer s.SetSuppressionPolicy(SuppressionPolicy{Enabled: true})
		for i := 0; i < b.N; i++ {
			if e, _ := s.Suppressed("acme", "user000001@example.org"); e != nil {
				b.Fatal(e)
			}
		}
	})
}

// Entries stored before a restart are found after it (the filter is
// loaded from the spool), and a removed then re-added address is found.
func TestSuppressionFilterAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	for i := 0; i < 50; i++ {
		if _, err := s.AddSuppression(&Suppression{Tenant: "acme", Address: fmt.Sprintf("u%d@x.test", i), Source: SuppressionAPI}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir)
	defer s.Close()
	s.SetSuppressionPolicy(SuppressionPolicy{Enabled: true, Classes: defaultClasses})
	if !s.supp.filter.loaded.Load() {
		t.Fatal("the filter was not loaded")
	}
	for i := 0; i < 50; i++ {
		if e, err := s.Suppressed("acme", fmt.Sprintf("u%d@x.test", i)); err != nil || e == nil {
			t.Fatalf("u%d after restart: %v, %v", i, e, err)
		}
	}
	if e, _ := s.Suppressed("acme", "u50@x.test"); e != nil {
		t.Error("an address never added is suppressed")
	}
	if _, err := s.RemoveSuppression("acme", "u1@x.test", SuppressionAPI); err != nil {
		t.Fatal(err)
	}
	if e, _ := s.Suppressed("acme", "u1@x.test"); e != nil {
		t.Error("a removed address is still suppressed")
	}
	bounce(t, s, "acme", "u1@x.test", "InvalidRecipient", &pipeline.Response{Code: 550, Enhanced: "5.1.1", Text: "gone"})
	bounce(t, s, "acme", "new@x.test", "InvalidRecipient", &pipeline.Response{Code: 550, Enhanced: "5.1.1", Text: "gone"})
	for _, a := range []string{"u1@x.test", "new@x.test"} {
		if e, _ := s.Suppressed("acme", a); e == nil || e.Source != SuppressionBounce {
			t.Errorf("%s after a bounce: %+v; want suppressed by the bounce", a, e)
		}
	}
}
