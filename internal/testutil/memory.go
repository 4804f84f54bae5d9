package testutil

import (
	"runtime"
	"testing"
)

// ReportHeld runs start (which starts n concurrent operations and
// returns once all of them hold what they hold while waiting), then
// reports on b the heap and stack memory they added, per operation
// ("B/op-held") and in total ("MiB-held"), after a GC on both sides.
// The whole process is counted: work start does for the measurement
// itself (client goroutines, say) is included.
func ReportHeld(b *testing.B, n int, start func()) {
	b.Helper()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start()
	runtime.GC()
	runtime.ReadMemStats(&after)
	used := float64(after.HeapInuse+after.StackInuse) - float64(before.HeapInuse+before.StackInuse)
	b.ReportMetric(used/float64(n), "B/op-held")
	b.ReportMetric(used/(1<<20), "MiB-held")
}
