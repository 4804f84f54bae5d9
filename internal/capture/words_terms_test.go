package capture

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// TestFilterDropsRepeatedTerms: a term repeated in a Text filter is
// looked up and checked once (a query of 30,000 one-letter terms cost
// seconds of CPU per request, each repeat redoing the same lookup), and
// the result is the same as without the repeats.
func TestFilterDropsRepeatedTerms(t *testing.T) {
	got := Filter{Text: `ord "order 1" ord ORD "Order 1" x "order 1"`}.lower().terms
	if want := []string{"ord", "order 1", "x"}; !slices.Equal(got, want) {
		t.Fatalf("terms = %q, want %q", got, want)
	}
	s := open(t, t.TempDir(), Options{})
	for i := 0; i < 30; i++ {
		if _, err := s.Put("acme", "", "a@s.test", []string{"b@d.test"}, msg("s", "b@d.test", fmt.Sprintf("your order %d x", i))); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(text string) []string { return searchIDs(t, s, "acme", Filter{Text: text}, 100) }
	once, many := ids(`ord "order 1"`), ids(strings.Repeat(`ord "order 1" `, 1000))
	if len(once) != 11 || !slices.Equal(once, many) {
		t.Fatalf("once: %d messages, repeated: %d; want the same 11", len(once), len(many))
	}
}

// TestMatchTextStopsWhenNothingCanMatch: once no message can hold every
// term so far, the other terms are not looked up (each lookup scans the
// tenant's vocabulary and allocates a set of its messages).
func TestMatchTextStopsWhenNothingCanMatch(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	for i := 0; i < 30; i++ {
		if _, err := s.Put("acme", "", "a@s.test", []string{"b@d.test"}, msg("s", "b@d.test", fmt.Sprintf("your order %d x%d", i, i))); err != nil {
			t.Fatal(err)
		}
	}
	more := []string{"nothere"}
	for i := 0; i < 50; i++ {
		more = append(more, fmt.Sprintf("x%d", i))
	}
	allocs := func(terms []string) float64 {
		return testing.AllocsPerRun(20, func() {
			s.mu.RLock()
			m := s.tenants["acme"].matchText(terms)
			s.mu.RUnlock()
			if !m.maybe.empty() {
				t.Fatal("a message matched a term no message holds")
			}
		})
	}
	if one, all := allocs(more[:1]), allocs(more); all > one {
		t.Fatalf("matchText allocated %v times for %d terms after one no message holds, %v for that term alone", all, len(more), one)
	}
}
