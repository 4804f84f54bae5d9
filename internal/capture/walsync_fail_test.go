package capture

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// failSyncFS is a filesystem whose files' syncs fail once fail is set
// (a disk that lost writes).
type failSyncFS struct {
	vfs.FS
	fail *atomic.Bool
}

type failSyncFile struct {
	vfs.File
	fail *atomic.Bool
}

var errDiskGone = errors.New("input/output error")

func (fs failSyncFS) Create(name string, cat vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, cat)
	if err != nil {
		return f, err
	}
	return failSyncFile{f, fs.fail}, nil
}

func (f failSyncFile) Sync() error {
	if f.fail.Load() {
		return errDiskGone
	}
	return f.File.Sync()
}

func (f failSyncFile) SyncData() error {
	if f.fail.Load() {
		return errDiskGone
	}
	return f.File.SyncData()
}

// A background sync that fails makes later captures fail (their
// recipients are then deferred by the capture Conn) instead of being
// answered on a disk that lost writes; the store does not hang.
func TestFailedLagSyncRefusesCaptures(t *testing.T) {
	var fail atomic.Bool
	s := open(t, "sb", Options{FS: failSyncFS{vfs.NewMem(), &fail}, SyncLag: time.Hour})
	if _, err := s.Put("acme", "", "a@s.test", []string{"b@d.test"}, msg("before", "b@d.test", "hello")); err != nil {
		t.Fatal(err)
	}
	fail.Store(true)
	if err := s.syncWAL(); !errors.Is(err, errDiskGone) {
		t.Fatalf("sync with a failing disk: %v, want %v", err, errDiskGone)
	}
	fail.Store(false) // a retry would succeed, but the lost writes are not back
	done := make(chan error, 1)
	go func() {
		_, err := s.Put("acme", "", "a@s.test", []string{"b@d.test"}, msg("after", "b@d.test", "hello"))
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a capture after a failed sync succeeded")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a capture after a failed sync hangs")
	}
	// A delete is answered only once synced: after the failure it is
	// refused too, although the disk now syncs again.
	page, err := s.Search("acme", Filter{}, 0, 10)
	if err != nil || len(page.Messages) == 0 {
		t.Fatalf("no capture listed: %v", err)
	}
	if _, err := s.Delete("acme", page.Messages[0].ID); !errors.Is(err, errDiskGone) {
		t.Errorf("delete after a failed sync: %v, want %v", err, errDiskGone)
	}
}
