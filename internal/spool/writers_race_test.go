package spool

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/sluice-mta/sluice/internal/testutil"
)

// TestWritesDuringClose (issue 21 review): many writers keep writing
// while the spool closes. Every write returns (nil before the close, an
// error after), Close returns, and every writer goroutine ends: the
// process is back to the goroutines it had before Open.
func TestWritesDuringClose(t *testing.T) {
	before := runtime.NumGoroutine()
	s, err := Open(t.TempDir(), Options{Node: "n1", MinFree: -1})
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg      sync.WaitGroup
		ok, bad atomic.Int64
		start   = make(chan struct{})
	)
	for i := 0; i < 3*maxIdleWriters; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for {
				if _, err := acceptSized(s, 100); err != nil {
					bad.Add(1)
					return
				}
				ok.Add(1)
			}
		}()
	}
	close(start)
	testutil.WaitFor(t, "writes under way", func() bool { return ok.Load() >= 2*maxIdleWriters })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait() // every writer saw an error: none hangs
	if bad.Load() != 3*maxIdleWriters {
		t.Fatalf("%d writers ended with an error, want %d", bad.Load(), 3*maxIdleWriters)
	}
	testutil.WaitFor(t, "every goroutine of the spool ended", func() bool { return runtime.NumGoroutine() <= before })
}

// TestWritesRacingHungTimeout (issue 21 review): writes pile up on a hung
// disk and time out together; once the disk answers the stuck writes
// finish on their writer goroutines (nobody waits for them any more), the
// spool recovers, takes writes again, and after Close no writer or
// recovery goroutine is left.
func TestWritesRacingHungTimeout(t *testing.T) {
	old := recoverEvery
	recoverEvery = 10 * time.Millisecond
	defer func() { recoverEvery = old }()
	before := runtime.NumGoroutine()
	fs, hang, block := hangingFS()
	s, err := Open("spool", Options{Node: "n1", FS: fs, MinFree: -1, WriteTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ { // idle writers to take the hung writes
		if _, err := acceptSized(s, 100); err != nil {
			t.Fatal(err)
		}
	}
	hang.Store(true)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := 0; i < 2*maxIdleWriters; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := acceptSized(s, 100); err != nil {
				failed.Add(1)
			}
		}()
	}
	wg.Wait() // every caller got an answer while the disk still hangs
	if failed.Load() == 0 {
		t.Fatal("no write failed on a hung disk")
	}
	hang.Store(false)
	close(block)
	testutil.WaitFor(t, "the spool writable again", func() bool { return s.CheckSpace() == nil })
	for i := 0; i < 20; i++ {
		if _, err := acceptSized(s, 100); err != nil {
			t.Fatalf("write after recovery: %v", err)
		}
	}
	if n := s.idleWriters.Load(); n > maxIdleWriters || n < 0 {
		t.Fatalf("%d idle writers", n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "every goroutine of the spool ended", func() bool { return runtime.NumGoroutine() <= before })
}

// hangingFS is an in-memory filesystem whose writes block, while hang is
// set, until block is closed.
func hangingFS() (fs vfs.FS, hang *atomic.Bool, block chan struct{}) {
	hang, block = new(atomic.Bool), make(chan struct{})
	fs = errorfs.Wrap(vfs.NewMem(), errorfs.InjectorFunc(func(op errorfs.Op) error {
		if hang.Load() && op.Kind.ReadOrWrite() == errorfs.OpIsWrite {
			<-block
		}
		return nil
	}))
	return fs, hang, block
}
