package spool

import (
	"sync"
	"testing"

	"github.com/oklog/ulid/v2"
)

// NewID from many goroutines at once (the ChaCha8 entropy under the lock,
// the time read and the encoding outside it): every id is a valid ULID and
// none repeats.
func TestNewIDConcurrentUnique(t *testing.T) {
	s := &Spool{entropy: ulid.Monotonic(newEntropy(), 0)}
	const workers, each = 8, 20000
	ids := make([][]string, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				ids[w] = append(ids[w], s.NewID())
			}
		}()
	}
	wg.Wait()
	seen := make(map[string]bool, workers*each)
	for _, l := range ids {
		for _, id := range l {
			if _, err := ulid.ParseStrict(id); err != nil {
				t.Fatalf("NewID gave %q: %v", id, err)
			}
			if seen[id] {
				t.Fatalf("NewID gave %q twice", id)
			}
			seen[id] = true
		}
	}
	// Two spools (two processes) draw different entropy.
	a, b := &Spool{entropy: ulid.Monotonic(newEntropy(), 0)}, &Spool{entropy: ulid.Monotonic(newEntropy(), 0)}
	if x, y := a.NewID(), b.NewID(); x[10:] == y[10:] {
		t.Fatalf("two spools' ids share their random part: %s %s", x, y)
	}
}
