package spool

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// WAL zero-ahead: why the spool writes zeros in front of Pebble's WAL.
//
// Every acceptance waits for one fdatasync of the write-ahead log (group
// commit). On ext4 (and XFS) an fdatasync after an append that grows the
// file, or that writes into preallocated (fallocate'd, "unwritten") blocks,
// must also commit the filesystem journal: the new size or the extent's
// new state is metadata that the data needs. An fdatasync after an
// overwrite of blocks that are already written and synced needs only the
// data: no journal commit. On this project's VM that is 184–260 µs
// against 103–140 µs for a 2.6 KB write (BENCHMARKS.md "Issue 21: one
// session"), and a single SMTP session waits for one such sync per message.
//
// Pebble gets the cheap kind of sync by recycling obsolete WAL files
// (Options.WALRecycling), at the price of keeping up to three of them, full
// of delivered mail, on disk (issue 14 item 7). Zero-ahead gets it without
// keeping anything: a background goroutine keeps a few MiB of zeros written
// and synced just ahead of the end of the live WAL, so Pebble's appends
// land on blocks that are already written, and one journal commit (ours,
// off the commit path) covers zeroAheadChunk bytes of WAL instead of one
// commit per sync. An fdatasync writes every dirty page of the file, so a
// Pebble sync that came while an extension's zeros sat dirty in the page
// cache would write them too (about 1 ms against 0.13 ms when they were
// 2 MiB, BenchmarkWALZeroAheadSync): each piece of zeros (len(zeros)
// bytes) is therefore written back and waited for (sync_file_range, on
// Linux) before the next, so at most one piece is ever dirty. A crash leaves zeros after the last record, which
// Pebble's WAL reader treats like the zeros of a preallocated file (the
// end of the log). The file is never larger than the preallocation Pebble
// asks for plus one chunk, so disk use does not change.
//
// No library does this (Pebble's only form of it is recycling); it is the
// spool's own business, so it lives here.

// zeroAheadChunk is how many bytes of zeros one extension writes, and
// zeroAheadLow how close to the zeroed end Pebble's writes may come before
// the next extension starts. Variables for tests.
// zeroAheadSkip is the least distance from Pebble's end at which an
// extension starts when the zeros are not ahead (a new file, or writes
// that outran them): Pebble appends across the gap rather than wait.
var (
	zeroAheadChunk int64 = 2 << 20
	zeroAheadLow   int64 = 1 << 20
	zeroAheadSkip  int64 = 64 << 10
)

// zeroAheadFS wraps the spool's filesystem: WAL files it creates get
// zeros written ahead of their end (walZeroFile). Everything else passes
// through.
type zeroAheadFS struct {
	vfs.FS
	log *slog.Logger
	// allow, when set, is asked before each piece of zeros: false below
	// the spool's write floor (nothing but Pebble's own refused writes
	// may reach a disk that is that full; disk.go).
	allow func() bool
	// active, when set, counts the extensions running (for tests).
	active *atomic.Int32
}

// Create implements vfs.FS. Pebble creates its WAL files with the
// "pebble-wal" category (wal.StandaloneManager.Create).
func (fs zeroAheadFS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, category)
	if err != nil || category != "pebble-wal" {
		return f, err
	}
	// A second descriptor for the zeros, so that they never move Pebble's
	// file offset and outlive a Close that races with an extension.
	z, err := fs.FS.OpenReadWrite(name, category)
	if err != nil {
		fs.log.Debug("spool: WAL zero-ahead off for this file", "file", name, "err", err)
		return f, nil
	}
	w := &walZeroFile{File: f, z: z, name: name, log: fs.log, chunk: zeroAheadChunk, low: zeroAheadLow, skip: zeroAheadSkip, allow: fs.allow, active: fs.active}
	w.cond = sync.NewCond(&w.mu)
	w.mu.Lock()
	w.startLocked()
	w.mu.Unlock()
	return w, nil
}

// walZeroFile is a WAL file whose Pebble writes are sequential (record.
// LogWriter only appends) and get zeros written ahead of them.
//
// The one rule that keeps Pebble's records safe: zeros are written only
// from busyFrom to the extension's end, which starts after the end of Pebble's writes,
// and a Pebble write that would reach into that range waits. The range
// shrinks from the front as each piece of zeros (len(zeros) bytes, a
// page-cache copy) is written, so such a wait is for one piece at most,
// and it is rare: an extension starts while Pebble is still zeroAheadLow
// bytes away. The sync of the zeros happens after the range is released:
// a Pebble write over zeros still in the page cache simply replaces them
// there.
type walZeroFile struct {
	vfs.File          // Pebble's descriptor
	z        vfs.File // ours, for the zeros; closed by the last extension or Close
	name     string
	log      *slog.Logger
	chunk    int64 // zeroAheadChunk when created
	low      int64 // zeroAheadLow when created
	skip     int64 // zeroAheadSkip when created
	allow    func() bool
	active   *atomic.Int32

	mu       sync.Mutex
	cond     *sync.Cond
	written  int64 // end of Pebble's writes
	zeroed   int64 // [0, zeroed) holds Pebble's data or zeros
	busy     bool  // an extension is writing zeros from busyFrom on
	busyFrom int64
	running  int  // extension goroutines (writing or syncing)
	closed   bool // Pebble closed the file
	off      bool // an extension failed: no more (Pebble's writes are unaffected)
	closeZ   sync.Once
}

// Write implements io.Writer for Pebble's sequential appends.
func (w *walZeroFile) Write(p []byte) (int, error) {
	w.mu.Lock()
	for w.busy && w.written+int64(len(p)) > w.busyFrom {
		w.cond.Wait()
	}
	w.mu.Unlock()
	n, err := w.File.Write(p)
	w.mu.Lock()
	w.written += int64(n)
	if !w.busy && !w.off && !w.closed && w.zeroed-w.written < w.low {
		w.startLocked()
	}
	w.mu.Unlock()
	return n, err
}

// WriteAt is not used by Pebble's WAL writer; refuse it rather than track
// a second kind of write.
func (w *walZeroFile) WriteAt(p []byte, off int64) (int, error) {
	return 0, errWALWriteAt
}

var errWALWriteAt = errors.New("spool: WriteAt on a WAL file (the zero-ahead wrapper allows appends only)")

// startLocked starts an extension from the end of what is written or
// zeroed. w.mu held.
func (w *walZeroFile) startLocked() {
	w.busy = true
	w.running++
	if w.active != nil {
		w.active.Add(1)
	}
	w.busyFrom = max(w.zeroed, w.written+w.skip)
	go w.extend(w.busyFrom, w.busyFrom+w.chunk)
}

// zeros is one shared, never written buffer of zeros: one piece of an
// extension.
var zeros = make([]byte, 64<<10)

func (w *walZeroFile) extend(from, to int64) {
	var err error
	for off := from; off < to && err == nil; {
		var n int64
		if w.allow != nil && !w.allow() {
			to = off // stop here; a later extension goes on from off
		} else {
			n = min(int64(len(zeros)), to-off)
			_, err = w.z.WriteAt(zeros[:n], off)
		}
		if err == nil {
			off += n
		}
		w.release(off, to, err)
		if err == nil && n > 0 {
			// After the release: Pebble waits only for the page-cache
			// copy above, never for the disk.
			if err = writeBack(w.z, off-n, n); err != nil {
				w.release(off, off, err)
			}
		}
	}
	if err == nil {
		// Data and the new size, durably: from here Pebble's syncs over
		// these blocks need no journal commit.
		err = w.z.SyncData()
	}
	if err != nil {
		w.log.Debug("spool: WAL zero-ahead stopped for this file", "file", w.name, "err", err)
	}
	if w.active != nil {
		w.active.Add(-1)
	}
	w.mu.Lock()
	w.running--
	last := w.closed && w.running == 0
	w.mu.Unlock()
	if last {
		w.closeZ.Do(func() { w.z.Close() })
	}
}

// release lets Pebble write up to off: the zeros before it are written.
// An extension ends at to, or at an error (zero-ahead then stops for the
// file; Pebble's writes are unaffected).
func (w *walZeroFile) release(off, to int64, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.busyFrom = off
	if err == nil {
		w.zeroed = off
	} else {
		w.off = true
	}
	if off >= to || err != nil {
		w.busy = false
	}
	w.cond.Broadcast()
}

// Close implements io.Closer. An extension still running closes our
// descriptor when it ends (Close does not wait for a disk that may hang).
func (w *walZeroFile) Close() error {
	w.mu.Lock()
	w.closed = true
	last := w.running == 0
	w.mu.Unlock()
	if last {
		w.closeZ.Do(func() { w.z.Close() })
	}
	return w.File.Close()
}

// aboveFloor is zeroAheadFS.allow: zeros are written only while the
// filesystem is above the spool's write floor (free space as last read;
// disk.go). Safe for concurrent use.
func (s *Spool) aboveFloor() bool { return !s.space.floor.Load() }
