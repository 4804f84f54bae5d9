package queue

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
)

// rqTally checks, with no delivery in flight, that every queued
// message's remaining count equals the recipients of its records and
// items (timer heap, ready lists with their backs, held), that each
// record names a live message and destination slot, and that the
// listing (Queues) and Stats say the same. It returns the recipients
// ready, waiting and held.
func rqTally(t *testing.T, q *Queue, when string) (ready, waiting, held int) {
	t.Helper()
	q.mu.Lock()
	per := map[msgRef]int{}
	bad := ""
	rec := func(r *waitRec, where string) int {
		n := q.recCount(r)
		if n == 0 || q.msgs.get(r.msg) == nil || q.destTab.slots[r.dest].d == nil || q.destTab.slots[r.dest].refs <= 0 {
			bad = fmt.Sprintf("a bad %s record %+v", where, *r)
		}
		per[r.msg] += n
		return n
	}
	for i := range q.waiting {
		waiting += rec(&q.waiting[i], "waiting")
	}
	items := 0
	for _, d := range q.dests {
		for _, it := range d.ready {
			ready += it.count()
			per[it.msg] += it.count()
			if q.msgs.get(it.msg) == nil {
				bad = "a ready item of no message"
			}
		}
		for i := range d.back {
			ready += rec(&d.back[i], "back")
		}
		items += readyLen(d)
	}
	for i := range q.held {
		held += rec(&q.held[i], "held")
	}
	msgs := 0
	for slot := range q.msgs.recs {
		m := &q.msgs.recs[slot]
		if !m.live {
			continue
		}
		msgs++
		ref := msgRef{uint32(slot), m.gen}
		if int(m.remaining) != per[ref] {
			bad = fmt.Sprintf("message %s: remaining %d, %d recipients in the index", q.msgs.id(ref), m.remaining, per[ref])
		}
		delete(per, ref)
	}
	if len(per) != 0 {
		bad = fmt.Sprintf("records of messages not queued: %v", per)
	}
	q.mu.Unlock()
	if bad != "" {
		t.Fatalf("%s: %s", when, bad)
	}
	var lr, lw, lh int
	for _, qi := range q.Queues() {
		lr, lw, lh = lr+qi.Ready, lw+qi.Waiting, lh+qi.Held
	}
	if lr != ready || lw != waiting || lh != held {
		t.Fatalf("%s: listing %d/%d/%d ready/waiting/held, index %d/%d/%d", when, lr, lw, lh, ready, waiting, held)
	}
	if s := q.Stats(); s.Held != held || s.Ready != items || s.Messages != msgs || s.ReadyRecipients != ready || s.WaitingRecipients != waiting {
		t.Fatalf("%s: stats %+v; index %d held, %d ready items, %d messages", when, s, held, items, msgs)
	}
	return ready, waiting, held
}

// TestRQBackHoldCancelReleaseRestart: a paused queue with more than
// readyLoaded items ready (two recipients each) and a second, deferred
// destination per message; an operator holds one recipient of an item
// at the back (a split read from the spool), a whole message, cancels a
// held recipient, holds and releases the whole paused queue, holds some
// again and restarts; counts agree after each step and, resumed and
// released, every recipient not cancelled is delivered exactly once.
func TestRQBackHoldCancelReleaseRestart(t *testing.T) {
	sp := openSpool(t)
	fd := &fakeDialer{}
	o := Options{Logger: slog.New(slog.DiscardHandler), MaxPerDestination: 2}
	q := New(sp, fd, o)
	q.Start()
	if _, err := q.Pause("x.test", "k"); err != nil {
		t.Fatal(err)
	}
	const n = readyLoaded + 60
	var ids []string
	want := map[string]bool{}
	later := time.Now().Add(time.Hour)
	for i := 0; i < n; i++ {
		m, rs := put(t, sp, "s@src.test", fmt.Sprintf("r%da@x.test", i), fmt.Sprintf("r%db@x.test", i), fmt.Sprintf("r%d@y.test", i))
		rs[2].NextAttempt = later
		b := sp.NewBatch()
		_ = b.PutRecipient(rs[2])
		if err := b.Commit(false); err != nil {
			t.Fatal(err)
		}
		q.Enqueue(m, rs)
		ids = append(ids, m.ID)
		for _, r := range rs {
			want[r.Address] = true
		}
	}
	if r, w, h := rqTally(t, q, "queued"); r != 2*n || w != n || h != 0 {
		t.Fatalf("queued: %d/%d/%d", r, w, h)
	}
	split := fmt.Sprintf("r%da@x.test", n-10)
	if got, err := q.Hold(Target{Filter: spool.ListFilter{Recipient: split}}, "k"); got != 1 || err != nil {
		t.Fatalf("Hold of one recipient at the back = %d, %v", got, err)
	}
	rqTally(t, q, "one recipient of the back held")
	if got, err := q.Hold(Target{MessageID: ids[n-5]}, "k"); got != 3 || err != nil {
		t.Fatalf("Hold of a message = %d, %v", got, err)
	}
	rqTally(t, q, "a message held")
	if got, err := q.Cancel(Target{Filter: spool.ListFilter{Recipient: split}}, "k"); got != 1 || err != nil {
		t.Fatalf("Cancel of the held recipient = %d, %v", got, err)
	}
	delete(want, split)
	if got, err := q.Release(Target{Filter: spool.ListFilter{Recipient: split}}, "k"); got != 0 || err != nil {
		t.Fatalf("Release of the cancelled recipient = %d, %v", got, err)
	}
	rqTally(t, q, "the held recipient cancelled")
	if got, err := q.Hold(Target{Filter: spool.ListFilter{Queue: "x.test"}}, "k"); got != 2*n-3 || err != nil {
		t.Fatalf("Hold of the queue = %d, %v; want %d", got, err, 2*n-3)
	}
	if r, w, h := rqTally(t, q, "the queue held"); r != 0 || h != 2*n || w != n-1 {
		t.Fatalf("the queue held: %d/%d/%d", r, w, h)
	}
	if got, err := q.Release(Target{Filter: spool.ListFilter{Queue: "x.test"}}, "k"); got != 2*n-1 || err != nil {
		t.Fatalf("Release of the queue = %d, %v", got, err)
	}
	if r, w, h := rqTally(t, q, "the queue released"); r != 2*n-1 || h != 1 || w != n-1 {
		t.Fatalf("the queue released: %d/%d/%d", r, w, h)
	}
	if got, err := q.Hold(Target{Filter: spool.ListFilter{RcptDomain: "x.test", State: "queued"}}, "k"); err != nil {
		t.Logf("Hold by state: %d, %v", got, err)
	}
	if got, err := q.Hold(Target{MessageID: ids[n-1]}, "k"); err != nil || got == 0 {
		t.Fatalf("Hold of the last message = %d, %v", got, err)
	}
	r0, w0, h0 := rqTally(t, q, "before the restart")
	q.Stop(context.Background())

	q = New(sp, fd, o)
	if _, err := q.Load(); err != nil {
		t.Fatal(err)
	}
	q.Start()
	defer q.Stop(context.Background())
	if r, w, h := rqTally(t, q, "after the restart"); r != r0 || w != w0 || h != h0 {
		t.Fatalf("after the restart %d/%d/%d, before %d/%d/%d", r, w, h, r0, w0, h0)
	}
	if _, err := q.Resume("x.test", "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Release(Target{}, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := q.RetryQueue("", "k"); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "everything delivered", func() bool { return q.Stats().Messages == 0 })
	fd.mu.Lock()
	sent := slices.Sorted(slices.Values(fd.sent))
	fd.mu.Unlock()
	if len(sent) != len(want) || len(slices.Compact(slices.Clone(sent))) != len(sent) {
		t.Fatalf("sent %d (%d distinct), want %d", len(sent), len(slices.Compact(slices.Clone(sent))), len(want))
	}
	for _, a := range sent {
		if !want[a] {
			t.Fatalf("sent %s, not wanted", a)
		}
	}
}

// TestRQOperatorChurnDuringDelivery: operators hold, release, cancel,
// retry, pause and resume at random while workers deliver to a sink
// that defers some recipients first (run it with -race); once they
// stop, everything is resumed, released and retried: each recipient
// not cancelled is delivered exactly once, and the index is empty.
func TestRQOperatorChurnDuringDelivery(t *testing.T) {
	sp := openSpool(t)
	fd := &fakeDialer{replies: map[string][]error{}}
	o := Options{Logger: slog.New(slog.DiscardHandler), MaxPerDestination: 2, RetryInitial: 20 * time.Millisecond, RetryMax: 50 * time.Millisecond}
	q := New(sp, fd, o)
	q.Start()
	defer q.Stop(context.Background())
	if _, err := q.Pause("x.test", "k"); err != nil {
		t.Fatal(err)
	}
	const n = readyLoaded + 200
	var ids []string
	all := map[string]bool{}
	for i := 0; i < n; i++ {
		rc := []string{fmt.Sprintf("r%da@x.test", i), fmt.Sprintf("r%db@x.test", i), fmt.Sprintf("r%d@y.test", i)}
		m, rs := put(t, sp, "s@src.test", rc...)
		fd.mu.Lock()
		if i%3 == 0 {
			fd.replies[rc[0]] = []error{temp}
			fd.replies[rc[2]] = []error{temp, temp}
		}
		fd.mu.Unlock()
		q.Enqueue(m, rs)
		ids = append(ids, m.ID)
		for _, a := range rc {
			all[a] = true
		}
	}
	var (
		wg        sync.WaitGroup
		cmu       sync.Mutex
		cancelled = map[string]bool{}
	)
	for g := 0; g < 3; g++ {
		wg.Add(1)
		go func(seed int64) {
			defer wg.Done()
			rnd := rand.New(rand.NewSource(seed))
			for k := 0; k < 60; k++ {
				i := rnd.Intn(n)
				rcpt := fmt.Sprintf("r%da@x.test", i)
				switch rnd.Intn(9) {
				case 0:
					_, _ = q.Hold(Target{MessageID: ids[i]}, "k")
				case 1:
					_, _ = q.Hold(Target{Filter: spool.ListFilter{Recipient: rcpt}}, "k")
				case 2:
					_, _ = q.Release(Target{MessageID: ids[i]}, "k")
				case 3:
					_, _ = q.Release(Target{Filter: spool.ListFilter{Queue: "x.test"}}, "k")
				case 4:
					// Cancel by recipient: note it only if it was queued.
					cmu.Lock()
					if got, err := q.Cancel(Target{Filter: spool.ListFilter{Recipient: rcpt}}, "k"); err == nil && got == 1 {
						cancelled[rcpt] = true
					}
					cmu.Unlock()
				case 5:
					_, _ = q.RetryQueue("", "k")
				case 6:
					_, _ = q.Resume("x.test", "k")
				case 7:
					_, _ = q.Pause("x.test", "k")
				case 8:
					_, _ = q.Hold(Target{Filter: spool.ListFilter{Queue: "x.test"}}, "k")
				}
			}
		}(int64(g + 1))
	}
	wg.Wait()
	if _, err := q.Resume("x.test", "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Release(Target{}, "k"); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "everything settled", func() bool {
		_, _ = q.RetryQueue("", "k")
		return q.Stats().Messages == 0
	})
	fd.mu.Lock()
	sent := slices.Sorted(slices.Values(fd.sent))
	fd.mu.Unlock()
	got := map[string]int{}
	for _, a := range sent {
		got[a]++
	}
	for a := range all {
		switch {
		case cancelled[a] && got[a] != 0:
			t.Errorf("%s cancelled and delivered", a)
		case !cancelled[a] && got[a] != 1:
			t.Errorf("%s delivered %d times", a, got[a])
		}
	}
	assertIndexEmpty(t, q)
}

// TestRQDownDestinationDrainsTheBack: a paused queue with a long ready
// list (front and back) resumes onto a destination that refuses to
// connect: the worker defers everything ready, the back included, in
// one pass; counts agree, and once the destination is up a retry
// delivers each recipient once.
func TestRQDownDestinationDrainsTheBack(t *testing.T) {
	sp := openSpool(t)
	fd := &fakeDialer{dialErr: temp}
	q := New(sp, fd, Options{Logger: slog.New(slog.DiscardHandler), MaxPerDestination: 1, RetryInitial: time.Hour, RetryMax: time.Hour})
	q.Start()
	defer q.Stop(context.Background())
	if _, err := q.Pause("x.test", "k"); err != nil {
		t.Fatal(err)
	}
	const n = 2*readyLoaded + 30
	for i := 0; i < n; i++ {
		m, rs := put(t, sp, "s@src.test", fmt.Sprintf("r%d@x.test", i), fmt.Sprintf("r%db@x.test", i))
		q.Enqueue(m, rs)
	}
	if r, _, _ := rqTally(t, q, "paused"); r != 2*n {
		t.Fatalf("ready %d", r)
	}
	if _, err := q.Resume("x.test", "k"); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "all deferred", func() bool { s := q.Stats(); return s.Waiting == n && s.Active == 0 })
	if r, w, h := rqTally(t, q, "deferred"); r != 0 || w != 2*n || h != 0 {
		t.Fatalf("deferred: %d/%d/%d", r, w, h)
	}
	fd.mu.Lock()
	fd.dialErr = nil
	dials := fd.dials
	fd.mu.Unlock()
	if dials != 1 {
		t.Fatalf("%d dials for a down destination, want 1", dials)
	}
	if got, err := q.RetryQueue("x.test", "k"); got != 2*n || err != nil {
		t.Fatalf("RetryQueue = %d, %v", got, err)
	}
	testutil.WaitFor(t, "all delivered", func() bool { return q.Stats().Messages == 0 })
	fd.mu.Lock()
	sent := len(fd.sent)
	fd.mu.Unlock()
	if sent != 2*n {
		t.Fatalf("sent %d, want %d", sent, 2*n)
	}
}

// TestRQUnreadableHeldStaysHeld: a held item that an operator's bounce
// or cancel takes out of the held records but cannot read back from the
// spool (a read error, not a missing record) goes back among the held
// records, not into the timer heap: the spool still says Held, and an
// item in the heap would be attempted at its due time without a release.
func TestRQUnreadableHeldStaysHeld(t *testing.T) {
	sp := openSpool(t)
	fd := &fakeDialer{}
	q := New(sp, fd, Options{Logger: slog.New(slog.DiscardHandler), RetryInitial: time.Millisecond})
	m, rs := put(t, sp, "s@src.test", "a@x.test", "b@x.test")
	// Paused, so that no worker takes the item before the hold (a worker
	// starts when mail is queued); Enqueue may name the destination's
	// site on a goroutine: hold once the recipients are queued.
	if _, err := q.Pause("x.test", "k"); err != nil {
		t.Fatal(err)
	}
	q.Enqueue(m, rs)
	testutil.WaitFor(t, "queued", func() bool { s := q.Stats(); return s.ReadyRecipients+s.WaitingRecipients == 2 })
	if got, err := q.Hold(Target{}, "k"); got != 2 || err != nil {
		t.Fatalf("Hold = %d, %v", got, err)
	}
	// What settle does with an item whose hydrate failed.
	items := q.extract(fromHeld, Target{}, span{})
	if len(items) != 1 {
		t.Fatalf("%d items extracted", len(items))
	}
	q.unreadable(items[0], fmt.Errorf("spool read: %w", context.DeadlineExceeded))
	if _, w, h := rqTally(t, q, "after the unreadable item"); h != 2 || w != 0 {
		t.Fatalf("after the unreadable item: %d waiting, %d held; want 0, 2", w, h)
	}
}
