package queue

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
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
				base := heapObjects()
				rssReset := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
				rss0 := vmHWM()
				var ms0, ms1 runtime.MemStats
				runtime.ReadMemStats(&ms0)
				stop := samplePeak()
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
					b.ReportMetric(float64(vmHWM())/1e6, "peak-rss-MB")
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

// heapObjects is the Go heap's bytes in objects (live and not yet
// collected).
func heapObjects() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// samplePeak samples heapObjects every 2 ms until the returned function
// is called, which returns the highest value seen.
func samplePeak() func() uint64 {
	var (
		mu   sync.Mutex
		peak = heapObjects()
		done = make(chan struct{})
		wg   sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(2 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-done:
				return
			case <-tk.C:
				v := heapObjects()
				mu.Lock()
				peak = max(peak, v)
				mu.Unlock()
			}
		}
	}()
	return func() uint64 {
		close(done)
		wg.Wait()
		v := heapObjects()
		mu.Lock()
		defer mu.Unlock()
		return max(peak, v)
	}
}

// vmHWM is the process's peak resident memory in bytes (VmHWM), 0 when
// it cannot be read.
func vmHWM() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}
