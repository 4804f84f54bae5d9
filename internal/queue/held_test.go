package queue

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
)

// heldIndex reports how many held records the queue keeps, how many
// recipients they hold, and whether each names a queued message and a
// live destination slot (a held record is compact by construction).
func heldIndex(q *Queue) (recs, rcpts int, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	ok = true
	for i := range q.held {
		r := &q.held[i]
		n := q.recCount(r)
		rcpts += n
		if n == 0 || q.msgs.get(r.msg) == nil || q.destTab.slots[r.dest].d == nil {
			ok = false
		}
	}
	return len(q.held), rcpts, ok
}

// TestHeldCompactAcrossRestart: recipients held by an operator are kept
// as compact records (one per message and destination, several
// recipients behind one record), counted and listed; they survive a
// restart held (the spool's Recipient.Held) and come back compact; a
// release by message sends that message only, a cancel by recipient
// drops one held recipient without an attempt, and the release of
// everything sends the rest. Once all is settled the index holds no
// destination slot and no recipient list.
func TestHeldCompactAcrossRestart(t *testing.T) {
	sp := openSpool(t)
	fd := &fakeDialer{}
	o := Options{Logger: slog.New(slog.DiscardHandler)}
	q1 := New(sp, fd, o)
	due := time.Now().Add(time.Hour)
	var ids []string
	for _, rc := range [][]string{{"a1@x.test", "a2@x.test", "a3@y.test"}, {"b1@x.test"}, {"c1@y.test", "c2@y.test"}} {
		m, rs := put(t, sp, "s@src.test", rc...)
		for _, r := range rs {
			r.NextAttempt = due
		}
		q1.Enqueue(m, rs)
		ids = append(ids, m.ID)
	}
	if n, err := q1.Hold(Target{}, "k"); n != 6 || err != nil {
		t.Fatalf("Hold = %d, %v; want 6", n, err)
	}
	// a's x.test pair, a's y.test, b's, c's pair.
	if recs, n, ok := heldIndex(q1); recs != 4 || n != 6 || !ok {
		t.Fatalf("held index: %d records, %d recipients, ok %v; want 4, 6, true", recs, n, ok)
	}
	if s := q1.Stats(); s.Held != 6 || s.Waiting != 0 || s.Ready != 0 {
		t.Fatalf("stats %+v after the hold", s)
	}
	q1.Stop(context.Background())

	q2 := New(sp, fd, o)
	if n, err := q2.Load(); n != 6 || err != nil {
		t.Fatalf("Load = %d, %v", n, err)
	}
	if recs, n, ok := heldIndex(q2); recs != 4 || n != 6 || !ok {
		t.Fatalf("held index after the restart: %d records, %d recipients, ok %v", recs, n, ok)
	}
	held := map[string]int{}
	for _, qi := range q2.Queues() {
		held[qi.Name] = qi.Held
		if qi.Ready != 0 || qi.Waiting != 0 || qi.Oldest.IsZero() {
			t.Fatalf("listing after the restart: %+v", qi)
		}
	}
	if held["x.test"] != 3 || held["y.test"] != 3 {
		t.Fatalf("held per queue: %v", held)
	}
	// The spool holds no next attempt for them (put): released, they
	// are due at once.
	q2.Start()
	defer q2.Stop(context.Background())
	if n, err := q2.Release(Target{MessageID: ids[1]}, "k"); n != 1 || err != nil {
		t.Fatalf("Release of b = %d, %v", n, err)
	}
	testutil.WaitFor(t, "b delivered", func() bool { return q2.Stats().Messages == 2 })
	if n, err := q2.Cancel(Target{Filter: spool.ListFilter{Recipient: "a2@x.test"}}, "k"); n != 1 || err != nil {
		t.Fatalf("Cancel of a2 = %d, %v", n, err)
	}
	if recs, n, ok := heldIndex(q2); recs != 3 || n != 4 || !ok {
		t.Fatalf("held index after the cancel: %d records, %d recipients, ok %v; want 3, 4", recs, n, ok)
	}
	if n, err := q2.Release(Target{}, "k"); n != 4 || err != nil {
		t.Fatalf("Release of all = %d, %v", n, err)
	}
	testutil.WaitFor(t, "everything settled", func() bool { return q2.Stats().Messages == 0 })
	fd.mu.Lock()
	sent := slices.Sorted(slices.Values(fd.sent))
	fd.mu.Unlock()
	if want := []string{"a1@x.test", "a3@y.test", "b1@x.test", "c1@y.test", "c2@y.test"}; !slices.Equal(sent, want) {
		t.Fatalf("sent %v, want %v", sent, want)
	}
	q2.mu.Lock()
	defer q2.mu.Unlock()
	if len(q2.held) != 0 || len(q2.destTab.byKey) != 0 || len(q2.more) != 0 {
		t.Fatalf("index left: %d held, %d destination slots, %d recipient lists", len(q2.held), len(q2.destTab.byKey), len(q2.more))
	}
}
