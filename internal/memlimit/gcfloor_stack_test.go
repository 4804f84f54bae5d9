package memlimit

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"testing"
)

// deepStack parks on stop with about n KiB of frames on its stack.
func deepStack(n int, stop <-chan struct{}) byte {
	var buf [1024]byte
	buf[n%len(buf)] = byte(n)
	if n == 0 {
		<-stop
		return buf[0]
	}
	return deepStack(n-1, stop) + buf[n%len(buf)]
}

// TestFloorCountsStacks (issue 21 review): the collector's headroom
// above the live heap is GOGC% of the live heap plus goroutine stacks
// plus globals, so a GC percentage computed from the live heap alone
// gave a relay with many connections (large stacks, small live heap)
// many times the floor between collections (here about 700 MiB instead
// of 16). The headroom the floor sets is at most the floor, or GOGC=100's
// when that is larger.
func TestFloorCountsStacks(t *testing.T) {
	defer debug.SetGCPercent(currentGCPercent())
	const floor = 16 << 20
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 400; i++ { // about 400 × 128 KiB of stacks
		wg.Add(1)
		go func() { defer wg.Done(); deepStack(80, stop) }()
	}
	defer func() { close(stop); wg.Wait() }()
	f := newGCFloor(floor)
	runtime.GC()
	runtime.GC() // the stacks were scanned by a whole cycle
	f.adjust()
	s := []metrics.Sample{{Name: "/gc/heap/goal:bytes"}, {Name: "/gc/heap/live:bytes"}, {Name: "/gc/scan/stack:bytes"}, {Name: "/gc/scan/globals:bytes"}}
	metrics.Read(s)
	goal, live, stacks, globals := s[0].Value.Uint64(), s[1].Value.Uint64(), s[2].Value.Uint64(), s[3].Value.Uint64()
	if stacks < floor {
		t.Fatalf("only %d bytes of stacks scanned: the test does not make the case", stacks)
	}
	headroom, allowed := goal-live, max(uint64(floor), live+stacks+globals)
	if headroom > allowed+allowed/4 {
		t.Errorf("heap goal %d MiB over a live heap of %d MiB (stacks %d MiB): %d MiB between collections, want at most about %d (GC percent %d)",
			goal>>20, live>>20, stacks>>20, headroom>>20, allowed>>20, f.pct)
	}
}

// TestFloorReturnsToDefault (issue 21 review): once the base passes the
// floor the GC percentage goes back to exactly 100 (GOGC's default, as
// documented), even from a percentage within the hysteresis of it.
func TestFloorReturnsToDefault(t *testing.T) {
	defer debug.SetGCPercent(currentGCPercent())
	f := newGCFloor(1) // every base is above a 1-byte floor
	f.pct = 110
	debug.SetGCPercent(110)
	runtime.GC()
	f.adjust()
	if f.pct != 100 || currentGCPercent() != 100 {
		t.Errorf("GC percent %d (floor's %d) with the base above the floor, want 100", currentGCPercent(), f.pct)
	}
}

// TestFloorYieldsToMemoryLimit (issue 21 review): with a soft memory
// limit below live heap + floor (a small cgroup limit, Set), the heap
// goal is the limit's, not the floor's: the floor never lets the heap
// grow past the limit.
func TestFloorYieldsToMemoryLimit(t *testing.T) {
	defer debug.SetGCPercent(currentGCPercent())
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	s := []metrics.Sample{{Name: "/gc/heap/goal:bytes"}, {Name: "/memory/classes/total:bytes"}}
	runtime.GC()
	metrics.Read(s)
	limit := s[1].Value.Uint64() + 8<<20 // far below the 256 MiB floor's headroom
	debug.SetMemoryLimit(int64(limit))
	f := newGCFloor(256 << 20)
	runtime.GC()
	f.adjust()
	if f.pct <= 100 {
		t.Fatalf("GC percent %d: the floor did not raise it, the test does not make the case", f.pct)
	}
	metrics.Read(s)
	if goal := s[0].Value.Uint64(); goal > limit {
		t.Errorf("heap goal %d MiB above the soft memory limit %d MiB with the floor on", goal>>20, limit>>20)
	}
}
