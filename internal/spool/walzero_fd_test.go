package spool

import (
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/testutil"
)

// openWALs counts this process's descriptors open on a WAL file (*.log)
// in dir.
func openWALs(t *testing.T, dir string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	n := 0
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err == nil && strings.HasPrefix(target, dir+"/") && strings.Contains(target, ".log") {
			n++
		}
	}
	return n
}

// Many WAL rotations on a real disk with zero-ahead on leak no file
// descriptor: while running, only the live WAL (Pebble's descriptor and
// the zeros' one) and extensions finishing on closed ones are open; after
// Close, none (an extension still running when its file closed closes its
// own). Garbage collection is off, so a leaked descriptor stays open.
func TestWALZeroAheadNoDescriptorLeak(t *testing.T) {
	// No garbage collection: a leaked *os.File's finalizer would close it.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	dir := t.TempDir()
	quiet := slog.New(slog.DiscardHandler)
	s, err := Open(dir, Options{Node: "n1", MemtableMB: 1, MinFree: -1, SyncLag: -1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	most := 0
	for i := range 600 { // 600 × 32 KB: about 18 WAL files of 1 MiB
		if _, err := acceptSized(s, 32<<10); err != nil {
			t.Fatal(err)
		}
		if i%20 == 0 {
			most = max(most, openWALs(t, dir))
		}
	}
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	if most == 0 {
		t.Fatal("no WAL descriptor seen open: the count is wrong")
	}
	if most > 6 { // live 2, plus extensions finishing on closed files
		t.Fatalf("%d descriptors open on WAL files at once (%d WAL files now): a leak", most, len(logs))
	}
	t.Logf("at most %d WAL descriptors open; %d WAL files at the end", most, len(logs))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitForWithin(t, 30*time.Second, "every WAL descriptor closed after Close", func() bool {
		return openWALs(t, dir) == 0
	})
}
