package queue

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/sluice-mta/sluice/internal/spool"
)

// readFailFS fails every read of an sstable while fail is set: the
// spool's records are there, but cannot be read (a disk read error).
type readFailFS struct {
	vfs.FS
	fail *atomic.Bool
}

var errDiskRead = errors.New("test: disk read error")

func (f readFailFS) Open(name string, opts ...vfs.OpenOption) (vfs.File, error) {
	file, err := f.FS.Open(name, opts...)
	if err != nil || !strings.HasSuffix(name, ".sst") {
		return file, err
	}
	return readFailFile{File: file, fail: f.fail}, nil
}

type readFailFile struct {
	vfs.File
	fail *atomic.Bool
}

func (f readFailFile) ReadAt(p []byte, off int64) (int, error) {
	if f.fail.Load() {
		return 0, errDiskRead
	}
	return f.File.ReadAt(p, off)
}

// TestHoldStopsAtAStepThatCannotBeReadBack: a hold whose step cannot be
// read back from the spool (a read error, not a missing recipient)
// stops with an IncompleteError that says so (Unread), nothing held and
// every recipient queued as it was; once reads work again the hold
// holds them all.
func TestHoldStopsAtAStepThatCannotBeReadBack(t *testing.T) {
	var fail atomic.Bool
	sp, err := spool.Open("spool", spool.Options{FS: readFailFS{FS: vfs.NewMem(), fail: &fail},
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	const total = 300
	ids := spoolQueued(t, sp, total, 2)
	q := New(sp, &fakeDialer{}, Options{Logger: slog.New(slog.DiscardHandler)})
	q.stepRecipients = 100
	if n, err := q.Load(); n != total || err != nil {
		t.Fatalf("Load = %d, %v", n, err)
	}
	// Cancel one message so that Reclaim compacts: every record is then
	// in a new sstable, none of its data blocks cached.
	var gone string
	for id := range ids {
		gone = id
		break
	}
	c, err := q.Cancel(Target{MessageID: gone}, "k")
	if err != nil || c != ids[gone] {
		t.Fatalf("Cancel = %d, %v", c, err)
	}
	if ok, err := sp.Reclaim(context.Background(), true); !ok || err != nil {
		t.Fatalf("Reclaim = %v, %v", ok, err)
	}
	fail.Store(true)
	n, err := q.Hold(Target{}, "k")
	fail.Store(false)
	var ie *IncompleteError
	if !errors.As(err, &ie) || !ie.Unread || n != 0 || ie.Done != 0 || ie.Left != total-c || errors.Is(err, spool.ErrNotQueued) {
		t.Fatalf("Hold = %d, %v (%+v); want nothing held and an IncompleteError with Unread", n, err, ie)
	}
	if st := q.Stats(); st.Held != 0 || st.WaitingRecipients != total-c {
		t.Fatalf("stats after the unreadable step: %+v", st)
	}
	if n, err := q.Hold(Target{}, "k"); n != total-c || err != nil {
		t.Fatalf("the hold again = %d, %v; want %d", n, err, total-c)
	}
}
