package memlimit

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
)

// DefaultGCFloor is the floor `sluice serve` sets (see Floor): 64 MiB.
const DefaultGCFloor = 64 << 20

// Floor makes the garbage collector let at least floor bytes be allocated
// between two collections, however small the live heap, unless the GOGC
// environment variable is set (the operator's choice wins) or floor is 0.
// It reports whether it started; stop ends it (the GC percentage it set
// stays until the next debug.SetGCPercent).
//
// Why: with GOGC=100 the collector runs each time the program has
// allocated as much as its live heap. An idle queue keeps the relay's
// live heap at about 7 MB while acceptance allocates about 30 KB per
// message, so at 6,000 messages a second it collected about 25 times a
// second: each collection stops the world twice, takes a quarter of the
// CPU for its marking and makes allocating goroutines (the requests being
// answered) assist it, a cost and a latency that every request in flight
// pays (issue 21, HTTP tail latency). After each collection Floor sets
// the GC percentage to max(100, 100*floor/base), base being the live
// heap plus goroutine stacks plus globals (what the runtime's heap goal
// scales with, see adjust): with a small base the heap may then grow by
// floor before the next collection; once the base passes floor (a large
// queue, many connections) it is GOGC=100 as before. The soft memory
// limit (Set, GOMEMLIMIT) still applies: near it the collector runs
// sooner. Memory cost: up to floor more heap while the base is small.
//
// It runs after each collection (a finalizer on a sentinel object, which
// runs on the runtime's finalizer goroutine) and costs one
// runtime/metrics read per collection.
func Floor(floor uint64) (stop func(), started bool) {
	_, env := os.LookupEnv("GOGC")
	return floorUnlessEnv(floor, env)
}

func floorUnlessEnv(floor uint64, gogcSet bool) (stop func(), started bool) {
	if gogcSet || floor == 0 {
		return func() {}, false
	}
	f := newGCFloor(floor)
	f.arm()
	return func() { f.stopped.Store(true) }, true
}

type gcFloor struct {
	floor   uint64
	pct     int // the GC percentage last set
	sample  []metrics.Sample
	stopped atomic.Bool
}

func newGCFloor(floor uint64) *gcFloor {
	return &gcFloor{floor: floor, pct: 100, sample: []metrics.Sample{
		{Name: "/gc/heap/live:bytes"}, {Name: "/gc/scan/stack:bytes"}, {Name: "/gc/scan/globals:bytes"},
	}}
}

// sentinel is allocated once per collection cycle; it has a pointer so it
// is never one of the tiny allocations that share a block (a finalizer on
// those may never run).
type sentinel struct{ _ *gcFloor }

func (f *gcFloor) arm() {
	runtime.SetFinalizer(&sentinel{}, func(*sentinel) {
		if f.stopped.Load() {
			return
		}
		f.adjust()
		f.arm()
	})
}

// adjust sets the GC percentage for the live heap, goroutine stacks and
// globals the last collection saw. It changes it only when it moves by
// more than an eighth (or back to 100), so a steady heap does not reset
// it after every collection.
//
// The collector lets (live heap + stacks + globals) × GC percent / 100 be
// allocated above the live heap before the next collection (the Go
// runtime's heap goal), so the base is all three: a relay with thousands
// of connections has tens of MiB of stacks over a live heap of a few,
// and a percentage from the live heap alone gave it many times the floor.
func (f *gcFloor) adjust() {
	metrics.Read(f.sample)
	var base uint64
	for _, s := range f.sample {
		if s.Value.Kind() != metrics.KindUint64 {
			return
		}
		base += s.Value.Uint64()
	}
	pct := gcPercentFor(base, f.floor)
	// Back to exactly 100 once the base passes the floor (a change within
	// the eighth would otherwise leave up to 112).
	if d := pct - f.pct; d > f.pct/8 || -d > f.pct/8 || pct == 100 && f.pct != 100 {
		debug.SetGCPercent(pct)
		f.pct = pct
	}
}

// gcPercentFor is the GC percentage that lets floor bytes be allocated
// between collections over live bytes of live heap, stacks and globals,
// at least 100 (the default) and at most 10,000.
func gcPercentFor(live, floor uint64) int {
	if live == 0 {
		live = 1 << 20
	}
	return int(min(max(100, floor*100/live), 10000))
}
