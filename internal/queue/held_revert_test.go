package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestRefusedHoldStepLeavesRecordsUnheld (review of setHeld changing the
// step's records in place): a hold whose second step the spool refuses
// (a full disk) leaves that step's recipients not held, in the index and
// in the records the queue keeps in memory. Those records are what a
// later deferral writes back (a copy of each): with the in-place change
// not undone, the deferral of a recipient the hold never recorded would
// store it held, and after a restart it would sit held with no event
// saying so. The recipients are due (in a paused queue's ready list,
// loaded) so that their records stay in memory.
func TestRefusedHoldStepLeavesRecordsUnheld(t *testing.T) {
	dir := testutil.MountTmpfs(t, "size=128m")
	sp, err := spool.Open(filepath.Join(dir, "spool"), spool.Options{MinFree: 32 << 20, MemtableMB: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	const total, step = 30, 10
	route := &pipeline.Route{Kind: pipeline.RouteRelay, Host: "10.0.0.1", Port: 2602, TLS: "none"}
	b := sp.NewBatch()
	for i := range total {
		m := &spool.Meta{ID: sp.NewID(), Sender: "bulk@sender.test", Source: "smtp", Received: time.Now(), Size: 20}
		_ = b.PutMessage(m, []byte("Subject: x\r\n\r\nbody\r\n"))
		_ = b.PutRecipient(&spool.Recipient{MsgID: m.ID, Idx: 0, Address: fmt.Sprintf("user%d@d.test", i), Domain: "d.test",
			Route: route, Attempts: 1, NextAttempt: time.Now().Add(-time.Second)})
	}
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	fd := &fakeDialer{replies: map[string][]error{}}
	for i := range total {
		fd.replies[fmt.Sprintf("user%d@d.test", i)] = []error{&pipeline.Error{Code: 451, Message: "later"}}
	}
	q := New(sp, fd, Options{Logger: slog.New(slog.DiscardHandler)})
	q.stepRecipients = step
	name := route.QueueName("d.test")
	if _, err := q.Pause(name, "key1"); err != nil {
		t.Fatal(err)
	}
	if n, err := q.Load(); n != total || err != nil {
		t.Fatalf("Load = %d, %v", n, err)
	}
	filler := filepath.Join(dir, "filler")
	steps := 0
	q.betweenSteps = func() {
		if steps++; steps == 1 {
			fill(t, filler, 2<<20)              // below the write floor (8 MB)
			time.Sleep(1100 * time.Millisecond) // the next write reads the free space again
		}
	}
	n, err := q.Hold(Target{Filter: spool.ListFilter{Queue: name}}, "key1")
	var ie *IncompleteError
	if !errors.As(err, &ie) || n != step {
		t.Fatalf("Hold = %d, %v; want the first step (%d) held and an IncompleteError", n, err, step)
	}
	if err := os.RemoveAll(filler); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the spool writable again", sp.Writable)
	q.betweenSteps = nil

	// Deliver what is not held: every recipient is deferred (451).
	q.Start()
	if _, err := q.Resume(name, "key1"); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the unheld recipients deferred", func() bool {
		fd.mu.Lock()
		defer fd.mu.Unlock()
		return len(fd.envs) >= total-step
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q.Stop(ctx)
	held, attempted := 0, 0
	var keys []*spool.Recipient
	if err := sp.ScanQueued(func(m *spool.Meta, r *spool.Recipient) error {
		keys = append(keys, &spool.Recipient{MsgID: m.ID, Idx: r.Idx})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		_, rs, err := sp.Queued(k.MsgID, []uint16{uint16(k.Idx)})
		if err != nil {
			t.Fatal(err)
		}
		r := rs[0]
		if r.Held {
			held++
		}
		if r.Attempts > 1 {
			attempted++
			if r.Held {
				t.Errorf("%s was deferred and stored held: the refused hold step's in-place change was not undone", r.Address)
			}
		}
	}
	if held != step || attempted != total-step {
		t.Fatalf("spool: %d held, %d deferred again; want %d and %d", held, attempted, step, total-step)
	}
}
