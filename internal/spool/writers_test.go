package spool

import (
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/testutil"
)

// TestWritersReusedAndEndAtClose: writes at once start writer goroutines
// that wait for later writes instead of ending, no more than
// maxIdleWriters of them, and every one ends when the spool closes.
func TestWritersReusedAndEndAtClose(t *testing.T) {
	before := runtime.NumGoroutine()
	s, err := Open(t.TempDir(), Options{Node: "n1", MinFree: -1})
	if err != nil {
		t.Fatal(err)
	}
	opened := runtime.NumGoroutine()
	var wg sync.WaitGroup
	for i := 0; i < 2*maxIdleWriters; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := acceptSized(s, 100); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	testutil.WaitFor(t, "writers idle", func() bool { return s.idleWriters.Load() > 0 })
	if n := s.idleWriters.Load(); n > maxIdleWriters {
		t.Fatalf("%d idle writers, want at most %d", n, maxIdleWriters)
	}
	idle := s.idleWriters.Load()
	for i := 0; i < 20; i++ { // one at a time: an idle writer takes each
		if _, err := acceptSized(s, 100); err != nil {
			t.Fatal(err)
		}
	}
	if got := runtime.NumGoroutine(); got > opened+int(idle)+5 {
		t.Errorf("%d goroutines after sequential writes, %d with the spool open and %d idle writers: writers not reused", got, opened, idle)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "writers ended", func() bool { return runtime.NumGoroutine() <= before })
}

// BenchmarkCommitOneWriter: one writer committing small unsynced batches
// one after the other (a delivery's outcome at one session): what a write
// costs beyond Pebble's own work. cpu-ns/op is the process's user+system
// CPU per commit (every goroutine's, Pebble's WAL writer's too), which
// depends less on other load on the host than ns/op.
func BenchmarkCommitOneWriter(b *testing.B) {
	s := open(b, b.TempDir())
	defer s.Close()
	var ru0, ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		bt := s.NewBatch()
		_ = bt.PutIdempotency("bench/k", []byte(`{"id":"1"}`), time.Time{})
		if err := bt.Commit(false); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) * time.Nanosecond
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
}
