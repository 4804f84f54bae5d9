package spool

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

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
	s.space.checked = time.Time{}
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
		s.space.checked = time.Time{} // no waiting for the cached statfs to expire
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
	block := make(chan struct{})
	var hang atomic.Bool
	fs := errorfs.Wrap(vfs.NewMem(), errorfs.InjectorFunc(func(op errorfs.Op) error {
		if hang.Load() && op.Kind.ReadOrWrite() == errorfs.OpIsWrite {
			<-block
		}
		return nil
	}))
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
