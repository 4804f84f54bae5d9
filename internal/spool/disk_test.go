package spool

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// acceptSized stages and commits one message of size bytes with one
// recipient; it returns the id and the commit's error.
func acceptSized(s *Spool, size int) (string, error) {
	id := s.NewID()
	b := s.NewBatch()
	_ = b.PutMessage(&Meta{ID: id, Sender: "a@x.test", Received: time.Now(), Size: size}, bytes.Repeat([]byte("x"), size))
	_ = b.PutRecipient(&Recipient{MsgID: id, Idx: 0, Address: "r@y.test", Domain: "y.test", Route: pipeline.MX()})
	b.AddEvent(&pipeline.Event{Type: pipeline.EventReceived, MessageID: id, Recipient: "r@y.test"})
	return id, b.Commit(true)
}

func deliver(t testing.TB, s *Spool, id string) {
	t.Helper()
	b := s.NewBatch()
	b.DeleteRecipient(id, 0)
	b.DeleteMessage(id)
	b.AddEvent(&pipeline.Event{Type: pipeline.EventDelivered, MessageID: id, Recipient: "r@y.test"})
	if err := b.Commit(false); err != nil {
		t.Fatal(err)
	}
}

// noPanic runs f and fails the test if it panics.
func noPanic(t *testing.T, what string, f func() error) error {
	t.Helper()
	var err error
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("%s panicked: %v", what, r)
			}
		}()
		err = f()
	}()
	return err
}

// TestWritePathsENOSPC injects ENOSPC into every write and sync of the
// spool's filesystem: each write path returns an error (452 4.3.1 for
// acceptance), never panics, and acceptance is refused from then on.
func TestWritePathsENOSPC(t *testing.T) {
	enospc := &os.PathError{Op: "write", Path: "spool", Err: syscall.ENOSPC}
	toggle := &errorfs.Toggle{Injector: errorfs.InjectorFunc(func(op errorfs.Op) error {
		if op.Kind.ReadOrWrite() == errorfs.OpIsWrite {
			return enospc
		}
		return nil
	})}
	fs := errorfs.Wrap(vfs.NewMem(), toggle)
	s, err := Open("spool", Options{Node: "n1", FS: fs, MinFree: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = noPanic(t, "Close", s.Close) }()
	kept, err := acceptSized(s, 1000)
	if err != nil {
		t.Fatal(err)
	}
	toggle.On()

	paths := []struct {
		name string
		f    func() error
	}{
		{"Commit(sync)", func() error { _, err := acceptSized(s, 1000); return err }},
		{"Commit(nosync)", func() error {
			b := s.NewBatch()
			b.AddEvent(&pipeline.Event{Type: pipeline.EventDeferred, MessageID: kept})
			return b.Commit(false)
		}},
		{"Sync", func() error { return s.Sync(context.Background()) }},
		{"ReadOutbox", func() error { _, err := s.ReadOutbox(0, 10); return err }},
		{"AckOutbox", func() error { return s.AckOutbox([]OutboxEvent{{Seq: 0}}) }},
		{"SetCursor", func() error { return s.SetCursor("x", 1) }},
		{"PruneHistory", func() error { return s.PruneHistory(time.Now()) }},
		{"Reclaim", func() error { _, err := s.Reclaim(context.Background(), true); return err }},
	}
	failedOnce := false
	for _, p := range paths {
		err := noPanic(t, p.name, p.f)
		if p.name == "Reclaim" {
			continue // nothing deleted: no compaction, no write
		}
		if err == nil {
			// Unsynced writes may sit in the memtable and WAL buffer until
			// a sync; once one failed, every later one fails.
			if failedOnce {
				t.Errorf("%s: no error after the spool failed", p.name)
			}
			continue
		}
		failedOnce = true
		if !errors.Is(err, pipeline.ErrSpoolFull) {
			t.Errorf("%s: error %v is not ErrSpoolFull", p.name, err)
		}
		if got := pipeline.Reply(err); got.Code != 452 {
			t.Errorf("%s: reply %d, want 452", p.name, got.Code)
		}
	}
	if !failedOnce {
		t.Fatal("no write path failed under ENOSPC")
	}
	if err := s.CheckSpace(); !errors.Is(err, pipeline.ErrSpoolFull) {
		t.Errorf("CheckSpace after ENOSPC = %v, want ErrSpoolFull", err)
	}
	if !s.Full() {
		t.Error("Full() = false after ENOSPC")
	}
	// Reads keep working: delivery can read what is stored.
	if _, err := s.Body(kept); err != nil {
		t.Errorf("Body after ENOSPC: %v", err)
	}
}

// TestReserve: below the free-space reserve CheckSpace refuses, above it
// it accepts.
func TestReserve(t *testing.T) {
	s, err := Open(t.TempDir(), Options{Node: "n1", MinFree: 1 << 62})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.CheckSpace(); !errors.Is(err, pipeline.ErrSpoolFull) || pipeline.Reply(err).Code != 452 {
		t.Fatalf("CheckSpace = %v, want ErrSpoolFull", err)
	}
	if !s.Full() {
		t.Fatal("Full() = false")
	}
	s.minFree = 1
	s.space.checked.Store(0)
	if err := s.CheckSpace(); err != nil {
		t.Fatalf("CheckSpace with room = %v", err)
	}
}

// TestReclaim: the space of delivered messages comes back while running.
func TestReclaim(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{Node: "n1", MemtableMB: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var ids []string
	for i := 0; i < 3000; i++ {
		id, err := acceptSized(s, 10<<10)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for _, id := range ids {
		deliver(t, s, id)
	}
	before := dirSize(t, dir)
	tablesBefore := s.db.Metrics().Total().TablesSize
	did, err := s.Reclaim(context.Background(), false)
	if err != nil || !did {
		t.Fatalf("Reclaim = %v, %v; want a compaction after 3000 deletions", did, err)
	}
	var after int64
	for i := 0; i < 50; i++ { // obsolete files are deleted in the background
		if after = dirSize(t, dir); after < before/2 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("Size() = %d", s.Size())
	t.Logf("spool size: %d bytes before, %d after compaction", before, after)
	tablesAfter := s.db.Metrics().Total().TablesSize
	t.Logf("tables: %d bytes before, %d after", tablesBefore, tablesAfter)
	if tablesAfter > tablesBefore/2 {
		t.Errorf("compaction left %d of %d bytes of tables", tablesAfter, tablesBefore)
	}
}

// TestFullTmpfs fills a real 30 MB tmpfs: the reserve refuses acceptance
// before Pebble meets ENOSPC, delivery continues, and every acknowledged
// message is there after a restart. (With the reserve eaten by another
// process, Pebble stalls commits while its flush retries: not covered.)
func TestFullTmpfs(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (needs root; CI runs as root): %v %s", err, out)
	}
	defer exec.Command("umount", "-l", dir).Run()
	path := filepath.Join(dir, "spool")
	s, err := Open(path, Options{Node: "n1", MemtableMB: 4, MinFree: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	var acked []string
	refused := false
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if err := s.CheckSpace(); err != nil {
			if !errors.Is(err, pipeline.ErrSpoolFull) {
				t.Fatal(err)
			}
			refused = true
			break
		}
		id, err := acceptSized(s, 50<<10)
		if err != nil {
			t.Fatalf("commit failed before the reserve was reached: %v", err)
		}
		acked = append(acked, id)
		s.space.mu.Lock()
		s.space.checked.Store(0) // no waiting for the cached statfs to expire
		s.space.mu.Unlock()
	}
	if !refused {
		t.Fatal("the reserve never refused acceptance")
	}
	t.Logf("%d messages accepted before the reserve refused", len(acked))
	// Delivery continues while full.
	deliver(t, s, acked[0])
	acked = acked[1:]

	// Free space (the next restart compacts it away; here: close with
	// room) and start again.
	_ = noPanic(t, "Close", s.Close)

	s, err = Open(path, Options{Node: "n1", MemtableMB: 4, MinFree: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.CheckSpace(); err != nil {
		t.Fatalf("after freeing space: %v", err)
	}
	missing := 0
	for _, id := range acked {
		if _, err := s.Body(id); err != nil {
			missing++
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged messages lost", missing, len(acked))
	}
	if _, err := acceptSized(s, 50<<10); err != nil {
		t.Fatalf("acceptance after freeing space: %v", err)
	}
}

func dirSize(t testing.TB, dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// TestHungDiskFailsWrites: a write that the disk never finishes (Pebble
// retrying a flush on a full disk) fails after the write timeout instead
// of hanging its caller, and later writes fail at once with 452 4.3.1.
func TestHungDiskFailsWrites(t *testing.T) {
	fs, hang, block := hangingFS()
	s, err := Open("spool", Options{Node: "n1", FS: fs, MinFree: -1, WriteTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { close(block); _ = noPanic(t, "Close", s.Close) }()
	if _, err := acceptSized(s, 1000); err != nil {
		t.Fatal(err)
	}
	hang.Store(true)
	start := time.Now()
	_, err = acceptSized(s, 1000)
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("a hung write returned %v after %v", err, time.Since(start))
	}
	if rep := pipeline.Reply(err); rep.Code != 452 || rep.Enhanced.String() != "4.3.1" {
		t.Fatalf("reply %+v for a hung disk, want 452 4.3.1", rep)
	}
	start = time.Now()
	if _, err := acceptSized(s, 1000); err == nil || time.Since(start) > 100*time.Millisecond {
		t.Fatalf("a write after the spool failed: %v after %v", err, time.Since(start))
	}
	if !s.Full() {
		t.Fatal("the spool does not say it cannot take mail")
	}
}

// countingHandler counts log records at info level or above whose
// message contains sub.
type countingHandler struct {
	slog.Handler
	n   *atomic.Int64
	sub string
}

func (h countingHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelInfo && strings.Contains(r.Message, h.sub) {
		h.n.Add(1)
	}
	return nil
}
func (h countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h countingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h countingHandler) WithGroup(string) slog.Handler            { return h }

// TestBackgroundFatalDoesNotCrash makes a background flush fail to write
// the MANIFEST (ENOSPC): Pebble calls Fatalf from its flush goroutine.
// The process must stay up, the spool must refuse writes with 452 4.3.1
// at once, log the fatal error once, and reads keep working.
func TestBackgroundFatalDoesNotCrash(t *testing.T) {
	var on atomic.Bool
	fs := errorfs.Wrap(vfs.NewMem(), errorfs.InjectorFunc(func(op errorfs.Op) error {
		if on.Load() && op.Kind.ReadOrWrite() == errorfs.OpIsWrite && strings.Contains(op.Path, "MANIFEST") {
			return &os.PathError{Op: "write", Path: op.Path, Err: syscall.ENOSPC}
		}
		return nil
	}))
	var fatals atomic.Int64
	log := slog.New(countingHandler{Handler: slog.DiscardHandler, n: &fatals, sub: "fatal"})
	s, err := Open("spool", Options{Node: "n1", FS: fs, MinFree: -1, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	kept, err := acceptSized(s, 1000)
	if err != nil {
		t.Fatal(err)
	}
	on.Store(true)
	// A flush writes an sstable then a MANIFEST edit, in Pebble's flush
	// goroutine: that is where Fatalf fires.
	go func() { _ = s.db.Flush() }()
	select {
	case <-s.plog.fatal:
	case <-time.After(30 * time.Second):
		t.Fatal("no Pebble fatal error after a MANIFEST write failed")
	}
	start := time.Now()
	_, err = acceptSized(s, 1000)
	if rep := pipeline.Reply(err); rep.Code != 452 || rep.Enhanced.String() != "4.3.1" {
		t.Fatalf("write after the fatal error: %v, want 452 4.3.1", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the write after the fatal error took %v", d)
	}
	if err := s.CheckSpace(); !errors.Is(err, pipeline.ErrSpoolFull) {
		t.Fatalf("CheckSpace = %v, want ErrSpoolFull", err)
	}
	if !s.Full() {
		t.Fatal("Full() = false after a fatal error")
	}
	if _, err := s.Body(kept); err != nil {
		t.Fatalf("a read after the fatal error: %v", err)
	}
	// Nothing that a scrape or a status request calls may hang on what
	// the parked goroutine holds.
	for name, f := range map[string]func(){
		"Size":   func() { s.Size() },
		"Status": func() { _, _ = s.Status(kept) },
		"List":   func() { _, _ = s.List(ListFilter{}) },
	} {
		done := make(chan struct{})
		go func() { f(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s hangs after a fatal error", name)
		}
	}
	for i := 0; i < 20; i++ {
		_, _ = acceptSized(s, 1000)
	}
	if n := fatals.Load(); n != 1 {
		t.Fatalf("%d log lines about the fatal error, want 1", n)
	}
}

// spaceFS reports a free space set by the test.
type spaceFS struct {
	vfs.FS
	avail *atomic.Uint64
}

func (f spaceFS) GetDiskUsage(string) (vfs.DiskUsage, error) {
	a := f.avail.Load()
	return vfs.DiskUsage{AvailBytes: a, TotalBytes: 1 << 40, UsedBytes: 1<<40 - a}, nil
}

// TestStartBelowReserve restarts a spool whose filesystem is below the
// reserve: it opens read-only (queued mail readable, acceptance refused
// with 452 4.3.1, one log line), and once space comes back it switches
// to writing on its own: new mail is accepted and the old mail is there.
func TestStartBelowReserve(t *testing.T) {
	old := roomEvery
	roomEvery = 20 * time.Millisecond
	defer func() { roomEvery = old }()
	var avail atomic.Uint64
	avail.Store(1 << 30)
	fs := spaceFS{FS: vfs.NewMem(), avail: &avail}
	s, err := Open("spool", Options{Node: "n1", FS: fs, MinFree: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := 0; i < 50; i++ {
		id, err := acceptSized(s, 5000)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	// Close without the final flush of a clean shutdown is not possible
	// here; the WAL is what a read-only open replays either way.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	avail.Store(1000) // below the reserve
	var lines atomic.Int64
	log := slog.New(countingHandler{Handler: slog.DiscardHandler, n: &lines, sub: "spool"})
	s, err = Open("spool", Options{Node: "n1", FS: fs, MinFree: 1 << 20, Logger: log})
	if err != nil {
		t.Fatalf("open below the reserve: %v", err)
	}
	defer s.Close()
	if !s.ReadOnly() {
		t.Fatal("not read-only below the reserve")
	}
	if err := s.CheckSpace(); pipeline.Reply(err).Code != 452 {
		t.Fatalf("CheckSpace read-only = %v, want 452", err)
	}
	if _, err := acceptSized(s, 5000); pipeline.Reply(err).Code != 452 {
		t.Fatalf("commit read-only = %v, want 452", err)
	}
	n := 0
	if err := s.ScanRecipients(func(*Meta, *Recipient) error { n++; return nil }); err != nil || n != len(ids) {
		t.Fatalf("ScanRecipients read-only: %d recipients, %v; want %d", n, err, len(ids))
	}
	if c, err := s.CollectOrphans(); c != 0 || err != nil {
		t.Fatalf("CollectOrphans read-only = %d, %v", c, err)
	}
	staged := s.NewBatch() // staged on the read-only database
	time.Sleep(10 * roomEvery)
	if got := lines.Load(); got != 1 {
		t.Fatalf("%d log lines while waiting for room, want 1", got)
	}
	if !s.ReadOnly() {
		t.Fatal("switched to writing without room")
	}

	avail.Store(1 << 30)
	deadline := time.Now().Add(30 * time.Second)
	for s.ReadOnly() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if s.ReadOnly() {
		t.Fatal("still read-only 30 s after space came back")
	}
	if err := s.CheckSpace(); err != nil {
		t.Fatalf("CheckSpace after the switch: %v", err)
	}
	if _, err := acceptSized(s, 5000); err != nil {
		t.Fatalf("acceptance after the switch: %v", err)
	}
	staged.DeleteRecipient(ids[0], 0)
	staged.DeleteMessage(ids[0])
	if err := staged.Commit(true); err != nil {
		t.Fatalf("a batch staged before the switch: %v", err)
	}
	for _, id := range ids[1:] {
		if _, err := s.Body(id); err != nil {
			t.Fatalf("message %s after the switch: %v", id, err)
		}
	}
	if _, err := s.Body(ids[0]); err == nil {
		t.Fatal("the batch staged before the switch was not applied")
	}
}

// TestStallRecovers: after a write timeout (disk hung), the spool
// accepts again on its own once the disk answers.
func TestStallRecovers(t *testing.T) {
	old := recoverEvery
	recoverEvery = 20 * time.Millisecond
	defer func() { recoverEvery = old }()
	fs, hang, block := hangingFS()
	s, err := Open("spool", Options{Node: "n1", FS: fs, MinFree: -1, WriteTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	hang.Store(true)
	if _, err := acceptSized(s, 1000); pipeline.Reply(err).Code != 452 {
		t.Fatalf("hung write: %v, want 452", err)
	}
	if err := s.CheckSpace(); err == nil {
		t.Fatal("CheckSpace accepts while writes are stalled")
	}
	hang.Store(false)
	close(block)
	deadline := time.Now().Add(30 * time.Second)
	for s.CheckSpace() != nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.CheckSpace(); err != nil {
		t.Fatalf("still refusing 30 s after the disk answered: %v", err)
	}
	if _, err := acceptSized(s, 1000); err != nil {
		t.Fatalf("acceptance after recovery: %v", err)
	}
}

// TestWriteFloor: below a quarter of the reserve every spool write is
// refused (452 4.3.1) before it reaches Pebble, and accepted again once
// there is room, without a restart.
func TestWriteFloor(t *testing.T) {
	var avail atomic.Uint64
	avail.Store(1 << 30)
	var writes atomic.Int64
	efs := errorfs.Wrap(vfs.NewMem(), errorfs.InjectorFunc(func(op errorfs.Op) error {
		if op.Kind.ReadOrWrite() == errorfs.OpIsWrite {
			writes.Add(1)
		}
		return nil
	}))
	s, err := Open("spool", Options{Node: "n1", FS: spaceFS{FS: efs, avail: &avail}, MinFree: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	id, err := acceptSized(s, 1000)
	if err != nil {
		t.Fatal(err)
	}
	expire := func() {
		s.space.mu.Lock()
		s.space.checked.Store(0)
		s.space.mu.Unlock()
	}
	avail.Store(512 << 10) // below 4 MiB / 4
	expire()
	s.CheckSpace() // reads the free space: below the floor from here on
	// WAL zero-ahead's extension of the acceptance above (walzero.go) may
	// still be writing: it stops at its next piece below the floor.
	testutil.WaitFor(t, "WAL zero-ahead's extensions to stop", func() bool { return s.zeroActive.Load() == 0 })
	before := writes.Load()
	b := s.NewBatch()
	b.DeleteRecipient(id, 0)
	b.AddEvent(&pipeline.Event{Type: pipeline.EventDelivered, MessageID: id})
	if err := b.Commit(false); pipeline.Reply(err).Code != 452 {
		t.Fatalf("an outcome below the write floor: %v, want 452", err)
	}
	if err := s.SetCursor("x", 1); err == nil {
		t.Fatal("a cursor write below the write floor succeeded")
	}
	if n := writes.Load() - before; n != 0 {
		t.Fatalf("%d filesystem writes below the write floor", n)
	}
	if s.Writable() {
		t.Fatal("Writable() below the write floor")
	}
	avail.Store(1 << 30)
	expire()
	if _, err := acceptSized(s, 1000); err != nil {
		t.Fatalf("a write once there is room: %v", err)
	}
	if !s.Writable() {
		t.Fatal("not Writable() once there is room")
	}
}

// TestBurstRereadsFreeSpace: a burst of acceptances within one second
// cannot walk through the reserve: past a sixteenth of the reserve
// written, the next check reads the free space again.
func TestBurstRereadsFreeSpace(t *testing.T) {
	var avail atomic.Uint64
	avail.Store(1 << 30)
	s, err := Open("spool", Options{Node: "n1", FS: spaceFS{FS: vfs.NewMem(), avail: &avail}, MinFree: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.CheckSpace(); err != nil {
		t.Fatal(err)
	}
	avail.Store(8 << 20) // the disk fills within the second (below the reserve, above the write floor)
	if err := s.CheckSpace(); err != nil {
		t.Fatalf("a check right after the last reading: %v (it should not read again yet)", err)
	}
	for written := 0; written < 1<<20+64<<10; written += 64 << 10 {
		if _, err := acceptSized(s, 64<<10); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CheckSpace(); !errors.Is(err, ErrFull) {
		t.Fatalf("after 1 MiB written (a sixteenth of the reserve): %v, want ErrFull without waiting for the next second", err)
	}
}

// TestNoReserveIsAlwaysWritable: with the reserve off (min_free = "0",
// MinFree < 0) a nearly full filesystem is neither "full" nor below a
// write floor, so delivery is never held for it.
func TestNoReserveIsAlwaysWritable(t *testing.T) {
	var avail atomic.Uint64
	avail.Store(1000)
	s, err := Open("spool", Options{Node: "n1", FS: spaceFS{FS: vfs.NewMem(), avail: &avail}, MinFree: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !s.Writable() || s.Full() || s.CheckSpace() != nil {
		t.Fatalf("reserve off: writable %v, full %v, check %v; want writable, not full", s.Writable(), s.Full(), s.CheckSpace())
	}
	if _, err := acceptSized(s, 5000); err != nil {
		t.Fatal(err)
	}
}
