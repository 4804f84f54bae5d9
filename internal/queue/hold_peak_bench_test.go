package queue

import (
	"context"
	"log/slog"
	"runtime"
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
	const n = 200_000
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
				stop := testutil.SamplePeakHeap()
				start := time.Now()
				got, err := q.Hold(t, "bench")
				wall := time.Since(start)
				peak := stop()
				runtime.ReadMemStats(&ms1)
				if err != nil || got != n {
					b.Fatalf("Hold = %d, %v", got, err)
				}
				b.ReportMetric(float64(peak-base)/1e6, "peak-heap-MB")
				if rssReset {
					b.ReportMetric(float64(testutil.PeakRSS())/1e6, "peak-rss-MB")
					b.ReportMetric(float64(rss0)/1e6, "rss-before-MB")
				}
				b.ReportMetric(float64(ms1.TotalAlloc-ms0.TotalAlloc)/n, "alloc-B/rcpt")
				b.ReportMetric(wall.Seconds(), "hold-s")
				if got, err := q.Release(Target{}, "bench"); err != nil || got != n {
					b.Fatalf("Release = %d, %v", got, err)
				}
			}
		})
	}
}
