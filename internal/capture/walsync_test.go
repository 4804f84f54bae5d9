package capture

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/sluice-mta/sluice/internal/testutil"
)

// TestCaptureSurvivesKill: every capture Put returned (the point where
// the queue records the recipient delivered) is in the store after the
// process is killed (SIGKILL) right after, with no fsync in between
// (SyncLag of an hour): the commit wrote its log record to the
// operating system before returning. A commit left in Pebble's log
// buffer (pebble.NoSync) loses the last captures here.
func TestCaptureSurvivesKill(t *testing.T) {
	const n = 60
	if dir := os.Getenv("SLUICE_CAPTURE_KILL_DIR"); dir != "" {
		// The child: capture from 6 goroutines, print each id once Put
		// returned, wait to be killed.
		s, err := Open(dir, Options{Logger: quiet(), SyncLag: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for g := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range n / 6 {
					sm, err := s.Put("acme", "", "a@s.test", []string{"b@d.test"}, msg(fmt.Sprintf("m %d %d", g, i), "b@d.test", "hello"))
					if err != nil {
						panic(err)
					}
					mu.Lock()
					os.Stdout.WriteString(sm.ID + "\n")
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		select {}
	}
	dir := t.TempDir()
	cmd, r := startChild(t, "TestCaptureSurvivesKill", "SLUICE_CAPTURE_KILL_DIR="+dir)
	var ids []string
	for len(ids) < n {
		line, err := r.ReadString('\n')
		if err != nil {
			break
		}
		ids = append(ids, strings.TrimSpace(line))
	}
	_ = cmd.Process.Kill() // SIGKILL: no Close, no sync
	_ = cmd.Wait()
	if len(ids) != n {
		t.Fatalf("the child captured %d messages, want %d", len(ids), n)
	}
	s := open(t, dir, Options{})
	defer s.Close()
	for _, id := range ids {
		if _, ok := s.Get("acme", id); !ok {
			t.Errorf("capture %s, returned before the kill, is lost", id)
		}
	}
}

// TestSyncLagMakesCapturesDurable models a power failure (a crash clone
// of an in-memory filesystem keeps only what was synced): a capture is
// on disk within SyncLag, at once with a negative SyncLag, and a
// Delete syncs everything before it answers; Close syncs too.
func TestSyncLagMakesCapturesDurable(t *testing.T) {
	put := func(s *Store, subject string) string {
		t.Helper()
		sm, err := s.Put("acme", "", "a@s.test", []string{"b@d.test"}, msg(subject, "b@d.test", "hello"))
		if err != nil {
			t.Fatal(err)
		}
		return sm.ID
	}
	// onDisk reports which of ids a power failure now would keep.
	onDisk := func(fs *vfs.MemFS, ids ...string) []bool {
		t.Helper()
		c := open(t, "sb", Options{FS: fs.CrashClone(vfs.CrashCloneCfg{}), SyncLag: -1})
		defer c.Close()
		var kept []bool
		for _, id := range ids {
			_, ok := c.Get("acme", id)
			kept = append(kept, ok)
		}
		return kept
	}

	fs := vfs.NewCrashableMem()
	s := open(t, "sb", Options{FS: fs, SyncLag: 10 * time.Millisecond})
	id := put(s, "lagged")
	testutil.WaitFor(t, "the capture synced by the background sync", func() bool { return onDisk(fs, id)[0] })
	s.Close()

	fs = vfs.NewCrashableMem()
	s = open(t, "sb", Options{FS: fs, SyncLag: -1})
	id = put(s, "synced")
	if !onDisk(fs, id)[0] {
		t.Error("with SyncLag negative a capture is not on disk when Put returns")
	}
	s.Close()

	fs = vfs.NewCrashableMem()
	s = open(t, "sb", Options{FS: fs, SyncLag: time.Hour})
	a, b := put(s, "a"), put(s, "b")
	if kept := onDisk(fs, a, b); kept[0] || kept[1] {
		t.Fatalf("captures on disk before any sync (%v): this test shows nothing", kept)
	}
	if ok, err := s.Delete("acme", a); !ok || err != nil {
		t.Fatalf("delete: %v %v", ok, err)
	}
	if kept := onDisk(fs, a, b); kept[0] || !kept[1] {
		t.Errorf("after the delete answered, on disk: deleted %v (want false), other %v (want true)", kept[0], kept[1])
	}
	c := put(s, "c")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if !onDisk(fs, c)[0] {
		t.Error("a capture is not on disk after Close")
	}
}
