package queue

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestHoldStopsOnAFullDisk: a hold in steps on a spool on a real,
// small filesystem (a tmpfs), which another file fills below the
// spool's write floor (a quarter of min_free) after the first step.
// The second step is refused: the hold stops with an IncompleteError
// counting the first step, the spool refuses the queue_held event of
// what was done too (EventErr), so one error line logs the action in
// its place (event, key, recipients done and at most left); the index
// and the spool agree on what is held. Once the file is gone the same
// hold holds the rest and records its event.
func TestHoldStopsOnAFullDisk(t *testing.T) {
	dir := testutil.MountTmpfs(t, "size=128m")
	var logs testutil.SyncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	// min_free 32 MB: the write floor is at 8 MB free, and a batch of
	// 2 MB or more (a sixteenth; a step is some 250 bytes a recipient)
	// reads the free space again before it is written.
	sp, err := spool.Open(filepath.Join(dir, "spool"), spool.Options{MinFree: 32 << 20, MemtableMB: 1, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	const total, step = 36_000, 12_000
	spoolQueued(t, sp, total, 3)
	q := New(sp, &fakeDialer{}, Options{Logger: log})
	q.stepRecipients = step
	filler := filepath.Join(dir, "filler")
	steps := 0
	q.betweenSteps = func() {
		if steps++; steps == 1 {
			// 2 MB left: below the floor even if the storage engine
			// deletes some obsolete files meanwhile, and room for it.
			fill(t, filler, 2<<20)
		}
	}
	if n, err := q.Load(); n != total || err != nil {
		t.Fatalf("Load = %d, %v", n, err)
	}
	n, err := q.Hold(Target{Filter: spool.ListFilter{State: spool.StateDeferred}}, "key1")
	var ie *IncompleteError
	if !errors.As(err, &ie) || ie.Unread || ie.Done != n || n < step || n > step+2 || ie.Left != total-n {
		t.Fatalf("Hold = %d, %v (%+v); want the first step of about %d held of %d and an IncompleteError", n, err, ie, step, total)
	}
	if !errors.Is(err, pipeline.ErrSpoolFull) || !errors.Is(ie.EventErr, pipeline.ErrSpoolFull) {
		t.Fatalf("want the spool's refusal of the step and of the event: %v / %v", err, ie.EventErr)
	}
	if !strings.Contains(err.Error(), "event was not recorded") {
		t.Errorf("the error does not say the event is missing: %v", err)
	}
	line := ""
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "queue action stopped part way and its event was not recorded") {
			line = l
		}
	}
	for _, want := range []string{"level=ERROR", "event=queue_held", "by=key1", fmt.Sprint("recipients_done=", n),
		fmt.Sprint("recipients_left_at_most=", total-n), `filter="state=deferred"`} {
		if !strings.Contains(line, want) {
			t.Fatalf("the log line of the unrecorded action lacks %q: %q\nlog:\n%s", want, line, logs.String())
		}
	}
	held, all := heldKeys(q), spoolKeys(t, sp)
	if len(held) != n || len(all) != total || !maps.Equal(held, only(all)) {
		t.Fatalf("index holds %d, spool %d of %d: want %d in both, the same", len(held), len(only(all)), len(all), n)
	}

	if err := os.RemoveAll(filler); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the spool writable again", sp.Writable)
	q.betweenSteps = nil
	if m, err := q.Hold(Target{Filter: spool.ListFilter{State: spool.StateDeferred}}, "key1"); m != total-n || err != nil {
		t.Fatalf("the hold again = %d, %v; want %d", m, err, total-n)
	}
	if h, s := heldKeys(q), only(spoolKeys(t, sp)); len(h) != total || !maps.Equal(h, s) {
		t.Fatalf("after the second hold: index %d, spool %d; want %d", len(h), len(s), total)
	}
	// The first hold's event was refused (logged instead); the second
	// counts what it held.
	if got, want := adminCounts(t, sp), []string{fmt.Sprint("queue_held:", total-n)}; !slices.Equal(got, want) {
		t.Fatalf("admin events %q, want %q", got, want)
	}
}

// fill writes files under the directory path until about left bytes
// are free on its filesystem: the storage engine may delete
// obsolete files while one is written (megabytes, right after a step's
// flushes), so it tops up with another file until the free space stays
// within 256 KiB of left.
func fill(t *testing.T, path string, left uint64) {
	t.Helper()
	if err := os.MkdirAll(path, 0o700); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		var st syscall.Statfs_t
		if err := syscall.Statfs(path, &st); err != nil {
			t.Fatal(err)
		}
		avail := st.Bavail * uint64(st.Bsize)
		if i == 0 && avail <= left {
			t.Fatalf("only %d bytes free, want more than %d", avail, left)
		}
		if avail <= left+256<<10 {
			return
		}
		if i == 20 {
			t.Fatalf("free space stays at %d bytes, want %d", avail, left)
		}
		if err := os.WriteFile(filepath.Join(path, fmt.Sprint(i)), make([]byte, avail-left), 0o600); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
