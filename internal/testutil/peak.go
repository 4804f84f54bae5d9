package testutil

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// HeapObjects is the Go heap's bytes in objects, live and not yet
// collected (runtime/metrics /memory/classes/heap/objects:bytes).
func HeapObjects() uint64 { return RuntimeMetric("/memory/classes/heap/objects:bytes") }

// SamplePeakHeap samples HeapObjects every 2 ms until the returned stop
// is called, which returns the highest value seen (a peak between two
// samples is missed). Call stop once.
func SamplePeakHeap() (stop func() uint64) {
	var mu sync.Mutex
	peak := HeapObjects()
	end := Sample(2*time.Millisecond, func() {
		v := HeapObjects()
		mu.Lock()
		peak = max(peak, v)
		mu.Unlock()
	})
	return func() uint64 {
		end()
		return max(peak, HeapObjects())
	}
}

// ResetPeakRSS starts a new peak of the process's resident memory
// (Linux: writing 5 to /proc/self/clear_refs sets VmHWM to VmRSS); false
// where that is not possible, and PeakRSS then still counts from the
// process's start.
func ResetPeakRSS() bool {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}

// PeakRSS is the process's peak resident memory in bytes (VmHWM), 0
// where /proc is missing.
func PeakRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
