package spool

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/sluice-mta/sluice/internal/testutil"
)

// zerosFaultFS hands the zero-ahead wrapper a second descriptor whose
// WriteAt goes through writeAt (nil: the file's own), and counts closes.
type zerosFaultFS struct {
	vfs.FS
	writeAt func(f vfs.File, p []byte, off int64) (int, error)
	closed  *atomic.Int32
}

func (fs zerosFaultFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, o ...vfs.OpenOption) (vfs.File, error) {
	f, err := fs.FS.OpenReadWrite(name, c, o...)
	if err != nil {
		return nil, err
	}
	return &zerosFaultFile{File: f, fs: fs}, nil
}

type zerosFaultFile struct {
	vfs.File
	fs zerosFaultFS
}

func (f *zerosFaultFile) WriteAt(p []byte, off int64) (int, error) {
	if f.fs.writeAt != nil {
		return f.fs.writeAt(f.File, p, off)
	}
	return f.File.WriteAt(p, off)
}

func (f *zerosFaultFile) Close() error {
	f.fs.closed.Add(1)
	return f.File.Close()
}

// createZeroWAL creates a WAL file "000001.log" in a new temporary
// directory through a zero-ahead wrapper of under and returns it (a
// *walZeroFile) with its path.
func createZeroWAL(tb testing.TB, under vfs.FS) (*walZeroFile, string) {
	tb.Helper()
	name := filepath.Join(tb.TempDir(), "000001.log")
	f, err := zeroAheadFS{FS: under, log: slog.New(slog.DiscardHandler)}.Create(name, "pebble-wal")
	if err != nil {
		tb.Fatal(err)
	}
	return f.(*walZeroFile), name
}

// appendAll writes n never-zero pieces of size bytes through f and
// returns what was written.
func appendAll(t *testing.T, f vfs.File, n, size int) []byte {
	t.Helper()
	var all bytes.Buffer
	for i := range n {
		p := bytes.Repeat([]byte{byte(i) | 1}, size)
		if _, err := f.Write(p); err != nil {
			t.Fatal(err)
		}
		all.Write(p)
	}
	return all.Bytes()
}

// A full disk while writing zeros (ENOSPC after the first piece) stops
// zero-ahead for that file only: Pebble's appends go on unharmed and
// never wait for a range nobody is writing, and the zeros' descriptor is
// closed with the file.
func TestWALZeroAheadNoSpace(t *testing.T) {
	smallZeroAhead(t, 64<<10, 32<<10, 4<<10)
	var calls, closed atomic.Int32
	w, name := createZeroWAL(t, zerosFaultFS{FS: vfs.Default, closed: &closed, writeAt: func(f vfs.File, p []byte, off int64) (int, error) {
		if calls.Add(1) > 1 {
			return 0, syscall.ENOSPC
		}
		return f.WriteAt(p, off)
	}})
	want := appendAll(t, w, 400, 1000) // 400 KB: far past the failed extension
	w.mu.Lock()
	off, busy := w.off, w.busy
	w.mu.Unlock()
	if !off || busy {
		t.Fatalf("after ENOSPC: off %v busy %v, want zero-ahead off and no range held", off, busy)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(want)], want) {
		t.Fatal("Pebble's appends were damaged after the zeros hit ENOSPC")
	}
	// The failed extension may still be on its way out (it released the
	// range before it ends): then it, not Close, closes the descriptor.
	for i := 0; i < 500 && closed.Load() == 0; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if n := closed.Load(); n != 1 {
		t.Fatalf("the zeros' descriptor was closed %d times, want 1", n)
	}
}

// A disk that hangs while zeros are written: Close does not wait for it
// (it returns with the extension still stuck), and the stuck extension
// closes the zeros' descriptor once the disk answers.
func TestWALZeroAheadHungDiskClose(t *testing.T) {
	smallZeroAhead(t, 64<<10, 32<<10, 4<<10)
	var closed atomic.Int32
	stuck, release := make(chan struct{}), make(chan struct{})
	var once atomic.Bool
	w, name := createZeroWAL(t, zerosFaultFS{FS: vfs.Default, closed: &closed, writeAt: func(f vfs.File, p []byte, off int64) (int, error) {
		if once.CompareAndSwap(false, true) {
			close(stuck)
			<-release
		}
		return f.WriteAt(p, off)
	}})
	<-stuck
	// Below the range being zeroed (it starts 4 KiB ahead): no wait.
	want := appendAll(t, w, 4, 1000)
	if err := w.Close(); err != nil { // would hang the test if it waited
		t.Fatal(err)
	}
	if n := closed.Load(); n != 0 {
		t.Fatalf("the zeros' descriptor was closed under a running extension (%d)", n)
	}
	close(release)
	testutil.WaitFor(t, "the extension to close its descriptor", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.running == 0 && closed.Load() == 1
	})
	got, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(want)], want) {
		t.Fatal("Pebble's appends were damaged")
	}
}
