package queue

import (
	"log/slog"
	"runtime"
	"testing"

	"github.com/sluice-mta/sluice/internal/spool"
)

// BenchmarkQueuedGC: what one garbage collection costs with n recipients
// queued (loaded as at a restart, one destination): the CPU of the
// whole process per forced collection, per queued recipient
// ("gc-cpu-ns/rcpt"). The collector marks the queue's index at every
// cycle, so this is what a soft memory limit close to the live heap
// (GOMEMLIMIT, collections more often) costs per cycle.
//
//	go test -run '^$' -bench QueuedGC -benchtime 1x ./internal/queue
func BenchmarkQueuedGC(b *testing.B) {
	const n, cycles = 100_000, 20
	dir := b.TempDir()
	sp, err := spool.Open(dir, spool.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer sp.Close()
	spoolQueued(b, sp, n, 1)
	q := New(sp, &fakeDialer{}, Options{Logger: slog.New(slog.DiscardHandler)})
	if got, err := q.Load(); err != nil || got != n {
		b.Fatalf("Load = %d, %v", got, err)
	}
	runtime.GC()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		reportGCCPU(b, n, cycles)
	}
	runtime.KeepAlive(q)
}
