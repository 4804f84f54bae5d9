package shaping

import (
	"context"
	"testing"
	"time"
)

// TestAcquireSkipsSourceOutOfRate: a source whose message rate holds the
// next message past the idle timeout is skipped while another source of
// the pool may send; when every source is held, Acquire says the
// earliest time one may send, not the time of the first source tried; a
// turn within the idle timeout is taken.
func TestAcquireSkipsSourceOutOfRate(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	s, _, _ := newShaper(t, `
["default"]
connection_limit = 5
["default".sources."s2"]
max_message_rate = "1/h"
["default".sources."s3"]
max_message_rate = "2/m"
`, Options{Sources: []Source{{Name: "s2"}, {Name: "s3"}}, Pools: map[string][]string{"P": {"s2", "s3"}},
		Now: func() time.Time { return now }})
	send := func(want string) {
		t.Helper()
		l, retry, why, err := s.Acquire("site", "P", time.Second)
		if err != nil || l == nil || l.Source.Name != want {
			t.Fatalf("acquire: lease %v (want on %s), held until %v for %q, %v", l, want, retry, why, err)
		}
		defer l.Release()
		if retry, why, _ := l.Wait(context.Background(), time.Second); !retry.IsZero() {
			t.Fatalf("wait on %s right after Acquire chose it: held until %v for %q", want, retry, why)
		}
	}
	send("s2") // round robin starts at s2; its turn of the hour
	send("s3") // s2's next turn is in an hour: skipped
	// Both used up: s2 next at +1h, s3 at +30s. Round robin tries s2
	// first; the hold is s3's.
	l, retry, why, _ := s.Acquire("site", "P", time.Second)
	if l != nil || why != ReasonRate || retry.Sub(now.Add(30*time.Second)).Abs() > time.Millisecond {
		t.Fatalf("both sources out of turn: lease %v, held until %v (want %v) for %q", l, retry, now.Add(30*time.Second), why)
	}
	now = now.Add(29500 * time.Millisecond) // s3's turn in 0.5 s
	if l, retry, why, _ := s.Acquire("site", "P", 100*time.Millisecond); l != nil || why != ReasonRate || retry.Sub(now.Add(500*time.Millisecond)).Abs() > time.Millisecond {
		t.Errorf("turn past a 100ms idle timeout: lease %v, held until %v for %q", l, retry, why)
	}
	l, _, _, _ = s.Acquire("site", "P", time.Second)
	if l == nil || l.Source.Name != "s3" {
		t.Fatalf("turn within the idle timeout: lease %v, want on s3", l)
	}
	l.Release()
}
