package testutil

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"
)

// ReportHeldWaits starts n goroutines running wait(ctx, j) (j from 0),
// waits until held reports that all n hold what they hold while waiting,
// then reports on b the heap and stack memory added since before they
// started, per wait ("B/op-held") and in total ("MiB-held"), after a GC
// on both sides; then cancels ctx and waits for the goroutines. The
// whole process is counted: what wait does on the measuring side (an
// HTTP client, say) is included. It fails b when held is not true within
// a minute.
func ReportHeldWaits(b *testing.B, n int, wait func(ctx context.Context, j int), held func() bool) {
	b.Helper()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	for j := 0; j < n; j++ {
		wg.Add(1)
		go func(j int) {
			defer wg.Done()
			wait(ctx, j)
		}(j)
	}
	deadline := time.Now().Add(time.Minute)
	for !held() {
		if time.Now().After(deadline) {
			b.Fatalf("the %d waits were not all held within a minute", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	used := float64(after.HeapInuse+after.StackInuse) - float64(before.HeapInuse+before.StackInuse)
	b.ReportMetric(used/float64(n), "B/op-held")
	b.ReportMetric(used/(1<<20), "MiB-held")
}
