package capture

import (
	"slices"
	"strings"
	"sync"
	"testing"
)

// TestConcurrentCapturesKeepOrderAcrossRestart: captures that commit
// concurrently (their ids handed out in one order, their synced commits
// finishing in another) are listed in the same order before and after a
// restart, which lists them by id; and a text search finds each.
func TestConcurrentCapturesKeepOrderAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				if _, err := s.Put("acme", "", "a@x.test", []string{"b@x.test"}, msg("s", "b@x.test", "hello world")); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	ids := func(f Filter) []string { return searchIDs(t, s, "acme", f, 1000) }
	before := ids(Filter{})
	if newestFirst := slices.IsSortedFunc(before, func(a, b string) int { return strings.Compare(b, a) }); len(before) != 320 || !newestFirst {
		t.Fatalf("%d messages; newest first by id: %v", len(before), newestFirst)
	}
	if got := ids(Filter{Text: `"hello world"`}); !slices.Equal(got, before) {
		t.Fatalf("phrase search finds %d of %d, or in another order", len(got), len(before))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, Options{})
	defer s.Close()
	if after := ids(Filter{}); !slices.Equal(after, before) {
		t.Fatalf("order changed across the restart")
	}
}

// searchIDs returns the ids of the first page (of limit) of tenant's
// messages matching f.
func searchIDs(t *testing.T, s *Store, tenant string, f Filter, limit int) []string {
	t.Helper()
	p, err := s.Search(tenant, f, 0, limit)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range p.Messages {
		out = append(out, m.ID)
	}
	return out
}
