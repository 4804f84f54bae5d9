package spool

import (
	"log/slog"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/sluice-mta/sluice/internal/testutil"
)

// A delivery outcome committed without fsync reaches the disk within
// SyncLag, so a process crash (the clone keeps only what was synced)
// does not make the relay deliver it again; with the background sync
// off it stays in memory (Pebble holds the partly filled WAL block).
func TestSyncLagMakesOutcomesDurable(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	for _, lag := range []time.Duration{10 * time.Millisecond, -1} {
		fs := vfs.NewCrashableMem()
		s, err := Open("spool", Options{Node: "n1", FS: fs, MinFree: -1, SyncLag: lag, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		id, err := acceptSized(s, 100)
		if err != nil {
			t.Fatal(err)
		}
		deliver(t, s, id) // Commit(false)
		delivered := func() bool {
			c, err := Open("spool", Options{Node: "n1", FS: fs.CrashClone(vfs.CrashCloneCfg{}), MinFree: -1, SyncLag: -1, Logger: quiet})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_, err = c.Meta(id)
			return err != nil
		}
		if lag > 0 {
			testutil.WaitFor(t, "the outcome synced by the background sync", delivered)
		} else {
			time.Sleep(100 * time.Millisecond)
			if delivered() {
				t.Fatal("without the background sync the outcome was on disk anyway: this test shows nothing")
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
