package spool

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/sluice-mta/sluice/internal/testutil"
)

// liveWALSize returns the apparent size of the one WAL file in dir.
func liveWALSize(t *testing.T, dir string) int64 {
	t.Helper()
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	if len(logs) != 1 {
		t.Fatalf("WAL files %v, want one", logs)
	}
	fi, err := os.Stat(logs[0])
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// Zero-ahead is on by default and off with WALRecycling (recycled files
// are written already) or NoWALZeroAhead: only then does the live WAL's
// size stay that of its records (Pebble's preallocation keeps the size).
func TestWALZeroAheadOnlyWhenAsked(t *testing.T) {
	for _, c := range []struct {
		name  string
		o     Options
		zeros bool
	}{
		{"default", Options{}, true},
		{"recycling", Options{WALRecycling: true}, false},
		{"off", Options{NoWALZeroAhead: true}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			o := c.o
			o.Node, o.MinFree, o.Logger = "n1", -1, slog.New(slog.DiscardHandler)
			s, err := Open(dir, o)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			for range 10 {
				if _, err := acceptSized(s, 1000); err != nil {
					t.Fatal(err)
				}
			}
			if c.zeros { // written in the background
				testutil.WaitFor(t, "the zeros ahead of the live WAL", func() bool {
					return liveWALSize(t, dir) >= zeroAheadSkip+zeroAheadChunk
				})
			} else if size := liveWALSize(t, dir); size >= zeroAheadSkip {
				t.Fatalf("live WAL %d bytes after 10 commits of 1 KB: zeros were written ahead", size)
			}
		})
	}
}
