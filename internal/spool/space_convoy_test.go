package spool

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// gatedSpaceFS is spaceFS whose free-space reading blocks while gate is
// set, until it is closed (a slow statfs: NFS, a busy disk).
type gatedSpaceFS struct {
	spaceFS
	mu      sync.Mutex
	gate    chan struct{} // nil: readings do not block
	entered chan struct{} // closed when a reading blocks on gate
}

func (f *gatedSpaceFS) GetDiskUsage(p string) (vfs.DiskUsage, error) {
	f.mu.Lock()
	gate, entered := f.gate, f.entered
	f.gate = nil
	f.mu.Unlock()
	if gate != nil {
		close(entered)
		<-gate
	}
	return f.spaceFS.GetDiskUsage(p)
}

// TestSlowSpaceReadingBoundsBurst (review of issue 21's TryLock in
// refreshSpace): while one caller's reading of the free space is slow,
// the others go on with the last reading, but not without bound: once
// recheckBytes more are written during it, acceptance waits for a
// reading, so a burst cannot walk through the reserve behind a slow statfs
// (TestBurstRereadsFreeSpace with the reading in progress). The model is
// the SMTP server: CheckSpace at MAIL, then the commit.
func TestSlowSpaceReadingBoundsBurst(t *testing.T) {
	var avail atomic.Uint64
	avail.Store(1 << 30)
	fs := &gatedSpaceFS{spaceFS: spaceFS{FS: vfs.NewMem(), avail: &avail}}
	s, err := Open("spool", Options{Node: "n1", FS: fs, MinFree: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.CheckSpace(); err != nil {
		t.Fatal(err)
	}
	recheck := s.recheckBytes() // 1 MiB
	// The disk fills (below the reserve, above the write floor), and the
	// next reading is slow.
	avail.Store(8 << 20)
	gate, entered := make(chan struct{}), make(chan struct{})
	fs.mu.Lock()
	fs.gate, fs.entered = gate, entered
	fs.mu.Unlock()

	// A: acceptances up to the one whose check starts the (slow) reading.
	aDone := make(chan error, 1)
	go func() {
		for {
			select {
			case <-entered:
				aDone <- nil
				return
			default:
			}
			if _, err := acceptSized(s, 64<<10); err != nil {
				aDone <- err
				return
			}
			if err := s.CheckSpace(); err != nil {
				aDone <- err
				return
			}
		}
	}()
	<-entered
	// B: a burst while the reading is in progress.
	const chunk, most = 64 << 10, 64 // up to 4 MiB
	var accepted atomic.Int64
	bDone := make(chan error, 1)
	go func() {
		for range most {
			if err := s.CheckSpace(); err != nil {
				if errors.Is(err, ErrFull) {
					bDone <- nil
				} else {
					bDone <- err
				}
				return
			}
			if _, err := acceptSized(s, chunk); err != nil {
				bDone <- err
				return
			}
			accepted.Add(chunk)
		}
		bDone <- nil
	}()
	// Release the reading once B has taken all it could: at once if B
	// never waits (the bug: B then has all 4 MiB), else after a while.
	// The assertion below does not depend on this time.
	release := time.After(2 * time.Second)
	for accepted.Load() < most*chunk {
		select {
		case <-release:
		case <-time.After(5 * time.Millisecond):
			continue
		}
		break
	}
	close(gate)
	if err := <-aDone; err != nil && !errors.Is(err, ErrFull) {
		t.Fatal(err)
	}
	if err := <-bDone; err != nil {
		t.Fatal(err)
	}
	if got := accepted.Load(); got > recheck+2*chunk {
		t.Fatalf("%d bytes accepted while one free-space reading was in progress, the disk below the reserve: want at most about recheckBytes (%d)", got, recheck)
	}
	if err := s.CheckSpace(); !errors.Is(err, ErrFull) {
		t.Fatalf("CheckSpace after the reading = %v, want ErrFull", err)
	}
}
