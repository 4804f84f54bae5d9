package capture

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/sluice-mta/sluice/internal/config"
)

// DefaultSyncLag is Options.SyncLag's default, sluice.sandbox's
// sync_lag default: the capture store's write-ahead log is synced to
// disk at most five times a second, and only while captures wait to be
// synced.
const DefaultSyncLag = config.DefaultSandboxSyncLag

// Durability of a capture (Options.SyncLag > 0, the default).
//
// A capture's commit asks Pebble for a synced write; the store's
// filesystem (lagFS) turns the write-ahead log's fsync into nothing, so
// the commit returns once its log record is written to the operating
// system: a kill -9 of the relay right after Put returned (and the
// queue recorded the recipient delivered) keeps it, as the page cache
// survives the process. The log is synced to disk by the store every
// SyncLag while unsynced records wait, when a log file is closed
// (memtable rotation, Close), and right after a Delete or DeleteAll.
// A power failure or an operating system crash can therefore lose the
// captures of the last SyncLag while the spool, whose own delivery
// outcomes are synced on its next commit, still has them delivered:
// set SyncLag negative for an fsync per capture group (the cost: about
// one fsync per six captures at 20 concurrent deliveries; BENCHMARKS.md
// "Issue 23: captures without an fsync each").
//
// Pebble's commit pipeline keeps every other guarantee: a log record is
// written before the commit returns, the memtable's flush to a table
// and the manifest are synced for real (only files Pebble opens as
// "pebble-wal" are wrapped), and a recycled log file is overwritten in
// place with Pebble's recyclable record format.

// lagFS is the capture store's filesystem: write-ahead log files whose
// Sync only marks them for syncLoop.
type lagFS struct {
	vfs.FS
	mu   sync.Mutex
	open map[*lagFile]struct{}
	// failed holds the first error of a background sync. Once set, Put
	// returns it before committing, so the capture's recipients are
	// deferred instead of more captures being answered on a disk that
	// lost writes (after a failed fsync Linux may drop the dirty pages,
	// so a retry proves nothing). Sticky until the store is reopened.
	// (The log files' Sync does not return it: Pebble treats a failed
	// commit as fatal.)
	failed atomic.Pointer[error]
}

// err is the sticky sync error, or nil.
func (fs *lagFS) err() error {
	if p := fs.failed.Load(); p != nil {
		return *p
	}
	return nil
}

const walCategory vfs.DiskWriteCategory = "pebble-wal"

func newLagFS(fs vfs.FS) *lagFS { return &lagFS{FS: fs, open: map[*lagFile]struct{}{}} }

func (fs *lagFS) wrap(f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return f, err
	}
	lf := &lagFile{File: f, fs: fs}
	fs.mu.Lock()
	fs.open[lf] = struct{}{}
	fs.mu.Unlock()
	return lf, nil
}

// Create wraps a write-ahead log file Pebble creates.
func (fs *lagFS) Create(name string, cat vfs.DiskWriteCategory) (vfs.File, error) {
	if cat != walCategory {
		return fs.FS.Create(name, cat)
	}
	return fs.wrap(fs.FS.Create(name, cat))
}

// ReuseForWrite wraps a write-ahead log file Pebble recycles.
func (fs *lagFS) ReuseForWrite(oldname, newname string, cat vfs.DiskWriteCategory) (vfs.File, error) {
	if cat != walCategory {
		return fs.FS.ReuseForWrite(oldname, newname, cat)
	}
	return fs.wrap(fs.FS.ReuseForWrite(oldname, newname, cat))
}

// syncAll syncs every open log file holding unsynced writes to disk.
func (fs *lagFS) syncAll() error {
	fs.mu.Lock()
	files := make([]*lagFile, 0, len(fs.open))
	for f := range fs.open {
		files = append(files, f)
	}
	fs.mu.Unlock()
	var errs []error
	for _, f := range files {
		errs = append(errs, f.syncNow())
	}
	return errors.Join(errs...)
}

// lagFile is a write-ahead log file: Sync, SyncData and SyncTo mark it
// unsynced (its writes are already in the operating system); syncNow
// syncs it.
type lagFile struct {
	vfs.File
	fs       *lagFS
	unsynced atomic.Bool
	// mu keeps Close from closing the file under a syncNow.
	mu     sync.Mutex
	closed bool
}

func (f *lagFile) Sync() error     { f.unsynced.Store(true); return nil }
func (f *lagFile) SyncData() error { f.unsynced.Store(true); return nil }

// SyncTo answers that it did not sync all (Pebble then does not count
// on it).
func (f *lagFile) SyncTo(int64) (bool, error) { f.unsynced.Store(true); return false, nil }

// syncNow syncs the file's data to disk if it holds unsynced writes.
func (f *lagFile) syncNow() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || !f.unsynced.Swap(false) {
		return nil
	}
	if err := f.File.SyncData(); err != nil {
		f.unsynced.Store(true)
		err = fmt.Errorf("sandbox store: syncing the write-ahead log: %w", err)
		f.fs.failed.CompareAndSwap(nil, &err)
		return err
	}
	return nil
}

// Close syncs what is unsynced, then closes the file.
func (f *lagFile) Close() error {
	err := f.syncNow()
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.fs.mu.Lock()
	delete(f.fs.open, f)
	f.fs.mu.Unlock()
	return errors.Join(err, f.File.Close())
}

// syncLoop syncs the write-ahead log every lag while it holds unsynced
// writes, until Close.
func (s *Store) syncLoop(lag time.Duration) {
	defer s.bg.Done()
	t := time.NewTicker(lag)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		if err := s.lag.syncAll(); err != nil {
			s.log.Error("cannot sync the sandbox store's write-ahead log: captures are refused (their recipients deferred) until the relay is restarted; check the disk", "err", err)
			return
		}
	}
}

// syncErr is the sticky error of a failed background sync, or nil.
func (s *Store) syncErr() error {
	if s.lag == nil {
		return nil
	}
	return s.lag.err()
}

// syncWAL makes every write committed so far durable (Delete and
// DeleteAll: a delete the API answered must not come back after a
// power failure).
func (s *Store) syncWAL() error {
	if s.lag == nil {
		return nil // each commit was synced
	}
	if err := s.lag.err(); err != nil {
		return err // a failed sync is not retried: the disk lost writes
	}
	return s.lag.syncAll()
}
