package queue

import (
	"context"
	"log/slog"
	"runtime"
	"testing"

	"github.com/sluice-mta/sluice/internal/spool"
)

// BenchmarkHeldGC measures the queue's index with n recipients (loaded
// as at a restart, one destination) in each place an operator can leave
// a million: waiting in the timer heap (as loaded), all held (Hold of
// everything, `sluice queue hold`), and ready behind a paused queue
// (Pause, then Retry of everything: a long ready list). It reports the
// live heap per recipient after a GC ("B/rcpt", the spool open before
// Load excluded) and the CPU of the whole process per forced collection
// per recipient ("gc-cpu-ns/rcpt"), what a soft memory limit close to
// the live heap costs per cycle (see BenchmarkQueuedGC). "held" holds
// them live, so its heap counts the spool's memtable of the hold's batch
// too; "held-restart" loads them held, as after a restart (the index
// only).
//
//	go test -run '^$' -bench HeldGC -benchtime 1x ./internal/queue
func BenchmarkHeldGC(b *testing.B) {
	const n, cycles = 200_000, 20
	dir := b.TempDir()
	sp, err := spool.Open(dir, spool.Options{})
	if err != nil {
		b.Fatal(err)
	}
	spoolQueued(b, sp, n, 1)
	if err := sp.Close(); err != nil {
		b.Fatal(err)
	}
	for _, place := range []string{"waiting", "held", "held-restart", "ready"} {
		b.Run(place, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if place == "held-restart" {
					holdAll(b, dir, n)
				}
				sp, err := spool.Open(dir, spool.Options{})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { _ = sp.Close() })
				var before, after runtime.MemStats
				runtime.GC()
				runtime.GC() // what a closed spool left to finalizers
				runtime.ReadMemStats(&before)
				q := New(sp, &fakeDialer{}, Options{Logger: slog.New(slog.DiscardHandler)})
				if got, err := q.Load(); err != nil || got != n {
					b.Fatalf("Load = %d, %v", got, err)
				}
				switch place {
				case "held":
					if got, err := q.Hold(Target{}, "bench"); err != nil || got != n {
						b.Fatalf("Hold = %d, %v", got, err)
					}
				case "ready":
					for _, qi := range q.Queues() {
						if _, err := q.Pause(qi.Name, "bench"); err != nil {
							b.Fatal(err)
						}
					}
					if got, err := q.Retry(Target{}, "bench"); err != nil || got != n {
						b.Fatalf("Retry = %d, %v", got, err)
					}
				}
				in := 0
				for _, qi := range q.Queues() {
					in += qi.Held + qi.Ready + qi.Waiting
				}
				if in != n {
					b.Fatalf("queues %+v, want %d recipients in all", q.Queues(), n)
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				b.ReportMetric((float64(after.HeapAlloc)-float64(before.HeapAlloc))/n, "B/rcpt")
				reportGCCPU(b, n, cycles)
				runtime.KeepAlive(q)
				// Undo the hold, so that the next run starts from the same
				// spool (a pause is left: ready runs last, and its next
				// iteration pauses again).
				if place == "held" || place == "held-restart" {
					if got, err := q.Release(Target{}, "bench"); err != nil || got != n {
						b.Fatalf("Release = %d, %v", got, err)
					}
				}
				q.Stop(context.Background())
			}
		})
	}
}

// holdAll holds the n recipients of the spool in dir, as `sluice queue
// hold` does, and closes it.
func holdAll(b *testing.B, dir string, n int) {
	sp, err := spool.Open(dir, spool.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer sp.Close()
	q := New(sp, &fakeDialer{}, Options{Logger: slog.New(slog.DiscardHandler)})
	defer q.Stop(context.Background())
	if _, err := q.Load(); err != nil {
		b.Fatal(err)
	}
	if got, err := q.Hold(Target{}, "bench"); err != nil || got != n {
		b.Fatalf("Hold = %d, %v", got, err)
	}
}
