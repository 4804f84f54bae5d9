package queue

import (
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
)

// readingsFS reports plenty of free space for the first `room` readings
// (GetDiskUsage) once armed, and 1000 bytes (below any write floor)
// after them.
type readingsFS struct {
	vfs.FS
	armed *atomic.Bool
	room  *atomic.Int32
}

func (f readingsFS) GetDiskUsage(string) (vfs.DiskUsage, error) {
	a := uint64(1 << 30)
	if f.armed.Load() && f.room.Add(-1) < 0 {
		a = 1000
	}
	return vfs.DiskUsage{AvailBytes: a, TotalBytes: 1 << 40, UsedBytes: 1<<40 - a}, nil
}

// TestCancelStoppedInAStepCountsWhatIsLeft: a cancel in one step (each
// message recorded on its own) stops when the disk fills part way
// through the step. What it says is left at most is what is still
// queued at most: Done and Left add up to no more than it selected.
// The log does not promise a retry the action will not make.
func TestCancelStoppedInAStepCountsWhatIsLeft(t *testing.T) {
	var armed atomic.Bool
	var room atomic.Int32
	room.Store(2) // a few hundred outcomes, then full (recheck every 256 KiB)
	sp, err := spool.Open("spool", spool.Options{FS: readingsFS{FS: vfs.NewMem(), armed: &armed, room: &room}, MinFree: 1 << 20,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	const total = 3000
	spoolQueued(t, sp, total, 2)
	var logs testutil.SyncBuffer
	q := New(sp, &fakeDialer{}, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if n, err := q.Load(); n != total || err != nil {
		t.Fatalf("Load = %d, %v", n, err)
	}
	armed.Store(true)
	n, err := q.Cancel(Target{}, "k")
	var ie *IncompleteError
	if !errors.As(err, &ie) || ie.Done != n || n == 0 || n == total {
		t.Fatalf("Cancel = %d, %v; want some cancelled and an IncompleteError", n, err)
	}
	queued := len(spoolKeys(t, sp))
	if queued != total-n || ie.Left < queued || ie.Done+ie.Left > total {
		t.Fatalf("stopped after %d with at most %d left; %d still queued of %d", ie.Done, ie.Left, queued, total)
	}
	if l := logs.String(); strings.Contains(l, "will retry") {
		t.Fatalf("the log promises a retry:\n%s", l)
	}
}
