package queue

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
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
	assertIndexEmpty(t, q2)
}

// assertIndexEmpty fails t unless q's index holds no held record, no
// destination slot and no recipient list (everything settled).
func assertIndexEmpty(t *testing.T, q *Queue) {
	t.Helper()
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.held) != 0 || len(q.destTab.byKey) != 0 || len(q.more) != 0 {
		t.Fatalf("index left: %d held, %d destination slots, %d recipient lists", len(q.held), len(q.destTab.byKey), len(q.more))
	}
}

// TestLongReadyListBackIsCompactAndInOrder: behind readyLoaded items a
// paused queue's ready list keeps compact records (dest.back); they are
// counted and listed, an operator's hold and cancel take them out of
// it, and once the queue resumes one worker delivers the rest in the
// order they were queued, the held one only after its release.
func TestLongReadyListBackIsCompactAndInOrder(t *testing.T) {
	sp := openSpool(t)
	fd := &fakeDialer{}
	q := New(sp, fd, Options{Logger: slog.New(slog.DiscardHandler), MaxPerDestination: 1})
	q.Start()
	defer q.Stop(context.Background())
	if _, err := q.Pause("x.test", "k"); err != nil {
		t.Fatal(err)
	}
	const n = readyLoaded + 50
	var ids, want []string
	for i := 0; i < n; i++ {
		rc := []string{fmt.Sprintf("r%d@x.test", i)}
		if i%7 == 0 {
			rc = append(rc, fmt.Sprintf("r%db@x.test", i))
		}
		m, rs := put(t, sp, "s@src.test", rc...)
		q.Enqueue(m, rs)
		ids = append(ids, m.ID)
		want = append(want, rc...)
	}
	q.mu.Lock()
	d := q.dests[destKey(pipeline.MX(), "x.test")]
	front, back := len(d.ready), len(d.back)
	q.mu.Unlock()
	if front != readyLoaded || back != n-readyLoaded {
		t.Fatalf("ready list: %d items and %d records behind; want %d and %d", front, back, readyLoaded, n-readyLoaded)
	}
	if qs := q.Queues(); len(qs) != 1 || qs[0].Ready != len(want) || !qs[0].Paused {
		t.Fatalf("listing: %+v, want %d ready", qs, len(want))
	}
	// Hold one message at the back (two recipients) and cancel a
	// recipient of another one there.
	hi := (readyLoaded/7 + 2) * 7 // a message with two recipients at the back
	heldID, cancelled := ids[hi], fmt.Sprintf("r%d@x.test", readyLoaded+20)
	if got, err := q.Hold(Target{MessageID: heldID}, "k"); got != 2 || err != nil {
		t.Fatalf("Hold = %d, %v", got, err)
	}
	if got, err := q.Cancel(Target{Filter: spool.ListFilter{Recipient: cancelled}}, "k"); got != 1 || err != nil {
		t.Fatalf("Cancel = %d, %v", got, err)
	}
	if s := q.Stats(); s.Ready != n-2 || s.Held != 2 {
		t.Fatalf("stats %+v, want %d items ready and 2 held", s, n-2)
	}
	var heldRcpts []string
	want = slices.DeleteFunc(want, func(a string) bool {
		if strings.HasPrefix(a, fmt.Sprintf("r%d", hi)) {
			heldRcpts = append(heldRcpts, a)
			return true
		}
		return a == cancelled
	})
	if _, err := q.Resume("x.test", "k"); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "all but the held delivered", func() bool { return q.Stats().Messages == 1 })
	if got, err := q.Release(Target{}, "k"); got != 2 || err != nil {
		t.Fatalf("Release = %d, %v", got, err)
	}
	testutil.WaitFor(t, "the held delivered", func() bool { return q.Stats().Messages == 0 })
	fd.mu.Lock()
	sent := slices.Clone(fd.sent)
	fd.mu.Unlock()
	if want = append(want, heldRcpts...); !slices.Equal(sent, want) {
		t.Fatalf("sent in another order or not all:\n got %v\nwant %v", sent, want)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(d.back) != 0 || len(q.destTab.byKey) != 0 || len(q.more) != 0 {
		t.Fatalf("index left: %d records behind, %d destination slots, %d recipient lists", len(d.back), len(q.destTab.byKey), len(q.more))
	}
}

// TestReadyRecMovesDueRecords: records the timer takes from the heap
// fill a destination's ready list as items up to readyLoaded and go
// behind it as the records they are, in due order, with their
// recipients, the live destination and no index entry left once the
// list is taken.
func TestReadyRecMovesDueRecords(t *testing.T) {
	q := New(nil, &fakeDialer{}, Options{Logger: slog.New(slog.DiscardHandler)})
	stale, live := &dest{key: "k"}, &dest{key: "k"}
	q.dests["k"] = live
	const n = readyLoaded + 10
	q.mu.Lock()
	for i := 0; i < n; i++ {
		msg := q.msgs.add(fmt.Sprintf("m%d", i), 0)
		it := &item{msg: msg, dest: stale, due: int64(i + 1), one: uint16(i)}
		if i%3 == 0 {
			it.more = &[]uint16{1, 2}
		} else {
			it.single = true
		}
		q.waiting.push(q.park(it))
	}
	for len(q.waiting) > 0 {
		if d := q.readyRec(q.waiting.pop()); d != live {
			t.Fatalf("readyRec to %p, want the live destination %p", d, live)
		}
	}
	if len(live.ready) != readyLoaded || len(live.back) != n-readyLoaded {
		t.Fatalf("ready list: %d items and %d records behind", len(live.ready), len(live.back))
	}
	items := q.takeReady(live)
	q.mu.Unlock()
	for i, it := range items {
		want := 1
		if i%3 == 0 {
			want = 2
		}
		if it.due != int64(i+1) || it.dest != live || it.count() != want || it.id != fmt.Sprintf("m%d", i) {
			t.Fatalf("item %d: due %d, dest %p, %d recipients, id %q", i, it.due, it.dest, it.count(), it.id)
		}
	}
	assertIndexEmpty(t, q)
}
