package queue

import (
	"log/slog"
	"testing"

	"github.com/sluice-mta/sluice/internal/testutil"
)

// forcedGCs is how many collections the process forced (runtime.GC).
func forcedGCs() uint64 { return testutil.RuntimeMetric("/gc/cycles/forced:gc-cycles") }

// TestStepsCollectBetween: an action of several steps starts a garbage
// collection between two steps (collectStep), at most one per gap, and
// one of a single step none.
func TestStepsCollectBetween(t *testing.T) {
	sp := openSpool(t)
	const total = 3000
	spoolQueued(t, sp, total, 2)
	q := New(sp, &fakeDialer{}, Options{Logger: slog.New(slog.DiscardHandler)})
	if n, err := q.Load(); n != total || err != nil {
		t.Fatalf("Load = %d, %v", n, err)
	}
	testutil.WaitFor(t, "no step collection running", func() bool { return !stepGC.Load() })
	before := forcedGCs()
	if n, err := q.Hold(Target{}, "k"); n != total || err != nil { // one step (StepRecipients)
		t.Fatalf("Hold = %d, %v", n, err)
	}
	if got := forcedGCs(); got != before {
		t.Fatalf("a one-step hold forced %d collections", got-before)
	}
	q.stepRecipients = 500
	steps := 0
	q.betweenSteps = func() { steps++ }
	if n, err := q.Release(Target{}, "k"); n != total || err != nil {
		t.Fatalf("Release = %d, %v", n, err)
	}
	if steps < 5 {
		t.Fatalf("%d gaps between steps, want 5 or more", steps)
	}
	testutil.WaitFor(t, "a collection between steps", func() bool { return !stepGC.Load() && forcedGCs() > before })
	if n := forcedGCs() - before; n > uint64(steps) {
		t.Fatalf("%d collections forced for %d gaps between steps", n, steps)
	}
}
