package memlimit

import (
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/sluice-mta/sluice/internal/testutil"
)

func TestGCPercentFor(t *testing.T) {
	for _, c := range []struct {
		live, floor uint64
		want        int
	}{
		{8 << 20, 64 << 20, 800},     // small heap: floor bytes between collections
		{64 << 20, 64 << 20, 100},    // at the floor: the default
		{1 << 30, 64 << 20, 100},     // large heap (a big queue): never below 100
		{100 << 10, 64 << 20, 10000}, // tiny heap: capped
		{0, 64 << 20, 6400},          // no reading yet: as if 1 MiB
	} {
		if got := gcPercentFor(c.live, c.floor); got != c.want {
			t.Errorf("gcPercentFor(%d, %d) = %d, want %d", c.live, c.floor, got, c.want)
		}
	}
}

func currentGCPercent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

// TestFloorRaisesGCPercent: with a live heap far below the floor, the GC
// percentage is raised after a collection, and GOGC set by the operator
// turns the floor off.
func TestFloorRaisesGCPercent(t *testing.T) {
	defer debug.SetGCPercent(currentGCPercent())
	t.Setenv("GOGC", "100")
	if _, started := Floor(1 << 30); started {
		t.Fatal("Floor started although GOGC is set")
	}
	// t.Setenv cannot unset: run the rest as if GOGC were not set.
	stop, started := floorUnlessEnv(1<<30, false)
	defer stop()
	if !started {
		t.Fatal("Floor did not start")
	}
	testutil.WaitFor(t, "the GC percentage raised", func() bool {
		runtime.GC()
		return currentGCPercent() > 1000 // a test binary's live heap is far below 1 GiB
	})
}
