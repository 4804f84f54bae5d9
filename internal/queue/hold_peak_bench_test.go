package queue

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
)

// BenchmarkHoldPeak measures what a queue-wide hold of n recipients
// costs in memory while it runs (issue 21: a live `sluice queue hold
// --state deferred` of a million peaked at 3.1 GB resident): the Go
// heap's peak above what it held before the hold ("peak-heap-MB",
// sampled every 2 ms), the process's peak resident memory during the
// hold ("peak-rss-MB", VmHWM after resetting it through
// /proc/self/clear_refs, and "rss-before-MB", right after the reset;
// not reported where that is not possible), and the bytes
// allocated per recipient. "state" filters on the recipient state, as
// examples/bench/million.sh does (every record is read back); "all"
// needs no read. Each iteration releases them again.
//
//	go test -run '^$' -bench HoldPeak -benchtime 1x ./internal/queue
func BenchmarkHoldPeak(b *testing.B) {
	n := 200_000
	if v, err := strconv.Atoi(os.Getenv("HOLD_PEAK_N")); err == nil && v > 0 {
		n = v
	}
	dir := b.TempDir()
	sp, err := spool.Open(dir, spool.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sp.Close() })
	spoolQueued(b, sp, n, 1)
	q := New(sp, &fakeDialer{}, Options{Logger: slog.New(slog.DiscardHandler)})
	if got, err := q.Load(); err != nil || got != n {
		b.Fatalf("Load = %d, %v", got, err)
	}
	defer q.Stop(context.Background())
	// HOLD_PEAK_GC=none: the collector's own pace; sync: a collection
	// between two steps, waited for (for a comparison).
	switch os.Getenv("HOLD_PEAK_GC") {
	case "none":
		defer func(f func()) { collectStep = f }(collectStep)
		collectStep = func() {}
	case "sync":
		defer func(f func()) { collectStep = f }(collectStep)
		collectStep = runtime.GC
	}
	if prof := os.Getenv("HOLD_PEAK_PROF"); prof != "" {
		// A heap profile (live heap after a collection) every 30 steps.
		steps := 0
		q.betweenSteps = func() {
			if steps++; steps%30 == 0 {
				f, err := os.Create(fmt.Sprintf("%s.%d", prof, steps))
				if err == nil {
					runtime.GC()
					b.Logf("step %d: %v", steps, readMem(sp))
					_ = pprof.WriteHeapProfile(f)
					_ = f.Close()
				}
			}
		}
	}
	for _, sel := range []string{"state", "all"} {
		t := Target{}
		if sel == "state" {
			t.Filter.State = spool.StateDeferred
		}
		b.Run(sel, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				runtime.GC()
				base := testutil.HeapObjects()
				rssReset := testutil.ResetPeakRSS()
				rss0 := testutil.PeakRSS()
				var ms0, ms1 runtime.MemStats
				runtime.ReadMemStats(&ms0)
				b.Logf("before the hold: %v", readMem(sp))
				stopMem := sampleMem(sp)
				stop := testutil.SamplePeakHeap()
				start, cpu0 := time.Now(), cpuTime()
				got, err := q.Hold(t, "bench")
				wall, cpu := time.Since(start), cpuTime()-cpu0
				peak := stop()
				atPeak, maxes := stopMem()
				b.Logf("hold peak: %v; highest: %v", atPeak, maxes)
				runtime.ReadMemStats(&ms1)
				if err != nil || got != n {
					b.Fatalf("Hold = %d, %v", got, err)
				}
				b.ReportMetric(float64(peak-base)/1e6, "peak-heap-MB")
				if rssReset {
					b.ReportMetric(float64(testutil.PeakRSS())/1e6, "peak-rss-MB")
					b.ReportMetric(float64(rss0)/1e6, "rss-before-MB")
				}
				b.ReportMetric(float64(ms1.TotalAlloc-ms0.TotalAlloc)/float64(n), "alloc-B/rcpt")
				b.ReportMetric(wall.Seconds(), "hold-s")
				b.ReportMetric(cpu.Seconds(), "hold-cpu-s")
				stopMem = sampleMem(sp)
				if got, err := q.Release(Target{}, "bench"); err != nil || got != n {
					b.Fatalf("Release = %d, %v", got, err)
				}
				atPeak, maxes = stopMem()
				b.Logf("release peak: %v; highest: %v", atPeak, maxes)
			}
		})
	}
}
