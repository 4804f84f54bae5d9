package spool

import (
	"bytes"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/sluice-mta/sluice/internal/testutil"
)

// smallZeroAhead makes extensions tiny, so that a test's writes run into
// them all the time.
func smallZeroAhead(t *testing.T, chunk, low, skip int64) {
	oc, ol, os := zeroAheadChunk, zeroAheadLow, zeroAheadSkip
	zeroAheadChunk, zeroAheadLow, zeroAheadSkip = chunk, low, skip
	t.Cleanup(func() { zeroAheadChunk, zeroAheadLow, zeroAheadSkip = oc, ol, os })
}

// Pebble's appends and the zeros written ahead of them never overlap: the
// file holds exactly what was appended, then zeros, however the writes
// and extensions interleave.
func TestWALZeroAheadNeverOverwritesRecords(t *testing.T) {
	smallZeroAhead(t, 4096, 2048, 512)
	fs := zeroAheadFS{FS: vfs.Default, log: slog.New(slog.DiscardHandler)}
	name := filepath.Join(t.TempDir(), "000001.log")
	f, err := fs.Create(name, "pebble-wal")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := f.(*walZeroFile); !ok {
		t.Fatalf("a WAL file was not wrapped: %T", f)
	}
	var want bytes.Buffer
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 3000 {
		p := make([]byte, 1+rng.IntN(9000))
		for j := range p {
			p[j] = byte(i) | 1 // never zero
		}
		want.Write(p)
		if _, err := f.Write(p); err != nil {
			t.Fatal(err)
		}
		if i%100 == 0 {
			if err := f.SyncData(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) < want.Len() {
		t.Fatalf("file is %d bytes, the appends %d", len(got), want.Len())
	}
	if !bytes.Equal(got[:want.Len()], want.Bytes()) {
		i := 0
		for got[i] == want.Bytes()[i] {
			i++
		}
		t.Fatalf("appended data differs at byte %d of %d: %d, want %d", i, want.Len(), got[i], want.Bytes()[i])
	}
	if tail := got[want.Len():]; bytes.Count(tail, []byte{0}) != len(tail) {
		t.Fatal("the bytes after the appends are not all zeros")
	}
	if len(got) == want.Len() {
		t.Fatal("nothing was zeroed ahead of the appends")
	}
}

// Only Pebble's WAL files are wrapped.
func TestWALZeroAheadOnlyWAL(t *testing.T) {
	fs := zeroAheadFS{FS: vfs.Default, log: slog.New(slog.DiscardHandler)}
	f, err := fs.Create(filepath.Join(t.TempDir(), "000002.sst"), "pebble-compaction")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, ok := f.(*walZeroFile); ok {
		t.Fatal("a table file was wrapped")
	}
}

// With zeros ahead of the WAL, every synced message survives a crash (the
// clone keeps only what was synced) and a restart replays the WAL up to
// its zeros, across many extensions; a clean reopen does too.
func TestWALZeroAheadRecovery(t *testing.T) {
	smallZeroAhead(t, 16<<10, 8<<10, 1<<10)
	quiet := slog.New(slog.DiscardHandler)
	fs := vfs.NewCrashableMem()
	s, err := Open("spool", Options{Node: "n1", FS: fs, MinFree: -1, SyncLag: -1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 400 {
		id, err := acceptSized(s, 100+i*7)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	check := func(what string, c *Spool) {
		t.Helper()
		for _, id := range ids {
			if _, err := c.Meta(id); err != nil {
				t.Fatalf("%s: message %s: %v", what, id, err)
			}
		}
	}
	crash := fs.CrashClone(vfs.CrashCloneCfg{})
	c, err := Open("spool", Options{Node: "n1", FS: crash, MinFree: -1, SyncLag: -1, Logger: quiet})
	if err != nil {
		t.Fatalf("reopen after a crash: %v", err)
	}
	check("after a crash", c)
	c.Close()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open("spool", Options{Node: "n1", FS: fs, MinFree: -1, SyncLag: -1, Logger: quiet})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	check("after a clean close", s)
	s.Close()
}

// Below the spool's write floor (allow false) no zeros are written: the
// extensions that Pebble's writes start stop before their first piece.
func TestWALZeroAheadStopsBelowTheFloor(t *testing.T) {
	smallZeroAhead(t, 4096, 2048, 512)
	var allow atomic.Bool
	allow.Store(true)
	var active atomic.Int32
	fs := zeroAheadFS{FS: vfs.Default, log: slog.New(slog.DiscardHandler), allow: allow.Load, active: &active}
	name := filepath.Join(t.TempDir(), "000001.log")
	f, err := fs.Create(name, "pebble-wal")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	idle := func() { testutil.WaitFor(t, "extensions to end", func() bool { return active.Load() == 0 }) }
	size := func() int64 {
		st, err := os.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		return st.Size()
	}
	idle()
	if size() == 0 {
		t.Fatal("no zeros ahead of a new WAL")
	}
	allow.Store(false)
	p := bytes.Repeat([]byte{7}, 1000)
	var n int64
	for range 50 { // 50,000 bytes: far past the zeros, an extension at every write
		if _, err := f.Write(p); err != nil {
			t.Fatal(err)
		}
		n += int64(len(p))
		idle()
	}
	if got := size(); got != n {
		t.Fatalf("below the floor the file grew to %d bytes for %d written: zeros were written", got, n)
	}
	allow.Store(true)
	if _, err := f.Write(p); err != nil {
		t.Fatal(err)
	}
	idle()
	if got := size(); got <= n+int64(len(p)) {
		t.Fatalf("above the floor again no zeros were written (size %d)", got)
	}
}
