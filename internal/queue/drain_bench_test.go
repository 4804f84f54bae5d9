package queue

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
)

// BenchmarkDrainQueued: n recipients deferred in the spool (spoolQueued,
// one destination), loaded as at a restart, then retried at once and
// delivered to a destination that accepts everything (fakeDialer); the
// CPU per delivered recipient of the whole process ("cpu-ns/rcpt": the
// queue, the spool's reads of compact items, the outcome commits; no
// network) and the wall time ("ns/rcpt", load-dependent).
//
//	go test -run '^$' -bench DrainQueued -benchtime 1x ./internal/queue
func BenchmarkDrainQueued(b *testing.B) {
	const n = 50_000
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		sp, err := spool.Open(b.TempDir(), spool.Options{})
		if err != nil {
			b.Fatal(err)
		}
		spoolQueued(b, sp, n, 1)
		fd := &fakeDialer{}
		q := New(sp, fd, Options{Logger: slog.New(slog.DiscardHandler)})
		if got, err := q.Load(); err != nil || got != n {
			b.Fatalf("Load = %d, %v", got, err)
		}
		q.Start()
		b.StartTimer()
		start, cpu0 := time.Now(), cpuTime()
		if moved, err := q.RetryQueue("", "bench"); moved != n || err != nil {
			b.Fatalf("RetryQueue = %d, %v", moved, err)
		}
		for q.Stats().Messages > 0 {
			time.Sleep(10 * time.Millisecond)
		}
		wall, cpu := time.Since(start), cpuTime()-cpu0
		b.StopTimer()
		b.ReportMetric(float64(wall.Nanoseconds())/n, "ns/rcpt")
		b.ReportMetric(float64(cpu.Nanoseconds())/n, "cpu-ns/rcpt")
		q.Stop(context.Background())
		sp.Close()
	}
}
