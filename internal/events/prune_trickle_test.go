package events

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/testutil"
)

// Review of issue 21's prune throttle (pruneSoon): under a steady trickle
// of events, each exported on its own round and with no idle round in
// between (Poll an hour), the outbox is still pruned while events flow, as
// far as the slower of two consumers has taken; and a restart after a
// clean stop re-exports nothing (the throttle delays deletes, never the
// cursors).
func TestPruneUnderTrickleAndRestart(t *testing.T) {
	sp := openSpool(t, t.TempDir())
	defer sp.Close()
	a, b := &recSink{name: "a"}, &recSink{name: "b"}
	ex, err := NewExporter(sp, []Sink{a, b}, Options{Poll: time.Hour, Linger: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go ex.Run(ctx)
	const n = 30
	start := time.Now()
	for seq := uint64(1); seq <= n; seq++ {
		commitEvent(t, sp, seq)
		testutil.WaitForWithin(t, 10*time.Second, "both sinks to take the event", func() bool {
			return len(a.got()) == int(seq) && len(b.got()) == int(seq)
		})
		time.Sleep(10 * time.Millisecond)
	}
	if time.Since(start) < 2*pruneEvery {
		t.Fatalf("trickle took %s, want more than %s for the test to mean something", time.Since(start), 2*pruneEvery)
	}
	// The trickle outlasted pruneEvery twice: some export round after the
	// first pruneEvery pruned (no idle round ran to take a put-off prune).
	testutil.WaitForWithin(t, 10*time.Second, "the outbox to be pruned during the trickle", func() bool {
		first, _ := sp.FirstOutboxSeq()
		return first > 1
	})
	cancel()
	<-ex.Done()
	if first, _ := sp.FirstOutboxSeq(); first != n+1 {
		t.Fatalf("outbox starts at %d after a clean stop, want %d", first, n+1)
	}
	for _, s := range []*recSink{a, b} {
		if got := s.got(); len(got) != n || !slices.IsSorted(got) || got[0] != 1 || got[n-1] != n {
			t.Fatalf("sink %s got %v, want 1..%d once each", s.name, got, n)
		}
	}

	// Restart: only the new event is exported.
	a2, b2 := &recSink{name: "a"}, &recSink{name: "b"}
	ex2, err := NewExporter(sp, []Sink{a2, b2}, Options{Poll: time.Hour, Linger: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	go ex2.Run(ctx2)
	commitEvent(t, sp, n+1)
	testutil.WaitForWithin(t, 10*time.Second, "both sinks to take the new event", func() bool {
		return len(a2.got()) >= 1 && len(b2.got()) >= 1
	})
	cancel2()
	<-ex2.Done()
	for _, s := range []*recSink{a2, b2} {
		if got := s.got(); !slices.Equal(got, []uint64{n + 1}) {
			t.Fatalf("after a restart sink %s got %v, want only [%d]", s.name, got, n+1)
		}
	}
}
