package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// heldKeys is the recipients (message id/index) q's index holds held.
func heldKeys(q *Queue) map[string]bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := map[string]bool{}
	for i := range q.held {
		it := q.view(&q.held[i])
		for _, x := range it.indexes() {
			out[fmt.Sprintf("%s/%d", it.id, x)] = true
		}
	}
	return out
}

// spoolKeys is the queued recipients of sp (message id/index): held
// reports whether each is recorded held.
func spoolKeys(t *testing.T, sp *spool.Spool) (held map[string]bool) {
	t.Helper()
	held = map[string]bool{}
	err := sp.ScanQueued(func(m *spool.Meta, r *spool.Recipient) error {
		held[fmt.Sprintf("%s/%d", m.ID, r.Idx)] = r.Held
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return held
}

// only is the keys of m whose value is true.
func only(m map[string]bool) map[string]bool {
	out := map[string]bool{}
	for k, v := range m {
		if v {
			out[k] = true
		}
	}
	return out
}

// adminCounts is the admin events of sp as "type:recipients".
func adminCounts(t *testing.T, sp *spool.Spool) []string {
	t.Helper()
	var out []string
	for _, ev := range adminEvents(t, sp) {
		if ev.Metadata[AdminByKey] == "" {
			out = append(out, ev.Type+":"+ev.Metadata["recipients"])
		}
	}
	return out
}

// TestControlInStepsActsOnAll: with steps of 7 recipients, a hold of
// every queued recipient (and one filtered on the sender, which reads
// them back) takes several spool batches and holds them all, the index
// agreeing with the spool; one queue_held event counts them all. A
// release and a cancel of everything, in steps too, act on all.
func TestControlInStepsActsOnAll(t *testing.T) {
	sp := openSpool(t)
	q := New(sp, &fakeDialer{}, Options{Logger: slog.New(slog.DiscardHandler)})
	q.stepRecipients = 7
	steps := 0
	q.betweenSteps = func() { steps++ }
	now := time.Now()
	total, fromA := 0, 0
	for i := range 40 {
		sender := "b@src.test"
		if i%3 == 0 {
			sender = "a@src.test"
		}
		var rc []string
		for j := range 1 + i%3 {
			rc = append(rc, fmt.Sprintf("r%d-%d@x%d.test", i, j, i%4))
		}
		putDeferred(t, sp, sender, "", now, rc...)
		total += len(rc)
		if sender == "a@src.test" {
			fromA += len(rc)
		}
	}
	if _, err := q.Load(); err != nil {
		t.Fatal(err)
	}
	q.Start()
	defer q.Stop(context.Background())

	a := "a@src.test"
	c0 := sp.Commits()
	if n, err := q.Hold(Target{Filter: spool.ListFilter{Sender: &a}}, "k"); n != fromA || err != nil {
		t.Fatalf("Hold of a's = %d, %v; want %d", n, err, fromA)
	}
	if steps < 2 || sp.Commits()-c0 < 3 {
		t.Fatalf("the hold of %d took %d steps between, %d commits; want several", fromA, steps, sp.Commits()-c0)
	}
	if h, s := heldKeys(q), only(spoolKeys(t, sp)); len(h) != fromA || !maps.Equal(h, s) {
		t.Fatalf("held: index %d, spool %d (equal %v); want %d", len(h), len(s), maps.Equal(h, s), fromA)
	}
	if n, err := q.Hold(Target{}, "k"); n != total-fromA || err != nil {
		t.Fatalf("Hold of the rest = %d, %v; want %d", n, err, total-fromA)
	}
	if h, s := heldKeys(q), only(spoolKeys(t, sp)); len(h) != total || !maps.Equal(h, s) {
		t.Fatalf("held: index %d, spool %d; want %d", len(h), len(s), total)
	}
	if st := q.Stats(); st.Held != total || st.WaitingRecipients+st.ReadyRecipients != 0 {
		t.Fatalf("stats %+v", st)
	}
	if n, err := q.Release(Target{}, "k"); n != total || err != nil {
		t.Fatalf("Release = %d, %v; want %d", n, err, total)
	}
	if h, s := heldKeys(q), only(spoolKeys(t, sp)); len(h)+len(s) != 0 {
		t.Fatalf("held after the release: index %d, spool %d", len(h), len(s))
	}
	if n, err := q.Cancel(Target{}, "k"); n != total || err != nil {
		t.Fatalf("Cancel = %d, %v; want %d", n, err, total)
	}
	if left := spoolKeys(t, sp); len(left) != 0 || q.Stats().Messages != 0 {
		t.Fatalf("after the cancel: %d in the spool, %+v", len(left), q.Stats())
	}
	assertIndexEmpty(t, q)
	want := []string{fmt.Sprint("queue_held:", fromA), fmt.Sprint("queue_held:", total-fromA),
		fmt.Sprint("queue_released:", total), fmt.Sprint("queue_cancelled:", total)}
	if got := adminCounts(t, sp); !slices.Equal(got, want) {
		t.Fatalf("admin events %q, want %q", got, want)
	}
}

// fillingSpool opens a spool in memory with a reserve of 1 MiB on a
// filesystem with avail bytes free (1 GiB at first): below a quarter of
// the reserve (avail.Store(1000)) every write is refused.
func fillingSpool(t *testing.T) (*spool.Spool, *atomic.Uint64) {
	t.Helper()
	avail := new(atomic.Uint64)
	avail.Store(1 << 30)
	sp, err := spool.Open("spool", spool.Options{FS: lowFS{FS: vfs.NewMem(), avail: avail}, MinFree: 1 << 20,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	return sp, avail
}

// TestHoldStopsAtAStepTheSpoolRefuses: the spool's filesystem fills up
// after the second step of a hold (below the write floor every write is
// refused). The hold stops there with an IncompleteError counting what
// it held: the first steps stay held, the rest stay waiting, in the
// index and in the spool alike, and so after a restart. Once there is
// room again, the same hold holds the rest.
func TestHoldStopsAtAStepTheSpoolRefuses(t *testing.T) {
	// A write refreshes the free space once 256 KiB were written since
	// the last reading (spool.recheckBytes): a step of 1,500 recipients
	// is larger, so its batch reads the free space before it is written.
	sp, avail := fillingSpool(t)
	const total = 6000
	spoolQueued(t, sp, total, 3)
	o := Options{Logger: slog.New(slog.DiscardHandler)}
	q := New(sp, &fakeDialer{}, o)
	q.stepRecipients = 1500
	steps := 0
	q.betweenSteps = func() {
		if steps++; steps == 2 {
			avail.Store(1000) // below the write floor (min_free / 4)
		}
	}
	if n, err := q.Load(); n != total || err != nil {
		t.Fatalf("Load = %d, %v", n, err)
	}
	n, err := q.Hold(Target{}, "k")
	var ie *IncompleteError
	if !errors.As(err, &ie) || ie.Unread || ie.Done != n || n < 3000 || n > 3010 || ie.Left != total-n {
		t.Fatalf("Hold = %d, %v (%+v); want about 3000 of %d held and an IncompleteError", n, err, ie, total)
	}
	if !errors.Is(err, spool.ErrFull) && sp.Writable() {
		t.Fatalf("the error is not the spool's refusal: %v", err)
	}
	held := heldKeys(q)
	all := spoolKeys(t, sp)
	if len(held) != n || !maps.Equal(held, only(all)) || len(all) != total {
		t.Fatalf("after the failed step: index holds %d, spool holds %d of %d; want %d in both, the same",
			len(held), len(only(all)), len(all), n)
	}
	if st := q.Stats(); st.Held != n || st.WaitingRecipients != total-n {
		t.Fatalf("stats after the failed step: %+v", st)
	}

	// A restart finds the same.
	q2 := New(sp, &fakeDialer{}, o)
	if got, err := q2.Load(); got != total || err != nil {
		t.Fatalf("Load = %d, %v", got, err)
	}
	if h := heldKeys(q2); !maps.Equal(h, held) {
		t.Fatalf("after a restart the index holds %d, before %d", len(h), len(held))
	}
	if st := q2.Stats(); st.Held != n || st.WaitingRecipients != total-n {
		t.Fatalf("stats after a restart: %+v", st)
	}

	avail.Store(1 << 30)
	testutil.WaitFor(t, "the spool writable again", sp.Writable)
	q2.betweenSteps = nil
	if m, err := q2.Hold(Target{}, "k"); m != total-n || err != nil {
		t.Fatalf("the hold again = %d, %v; want %d", m, err, total-n)
	}
	if h, s := heldKeys(q2), only(spoolKeys(t, sp)); len(h) != total || !maps.Equal(h, s) {
		t.Fatalf("after the second hold: index %d, spool %d; want %d", len(h), len(s), total)
	}
	// The event of the first hold was refused with its step; the second
	// counts what it held.
	if got, want := adminCounts(t, sp), []string{fmt.Sprint("queue_held:", total-n)}; !slices.Equal(got, want) {
		t.Fatalf("admin events %q, want %q", got, want)
	}
}

// TestCancelStopsWhenTheSpoolRefuses: a cancel in steps stops at the
// first outcome the spool refuses: what it cancelled is gone from the
// spool and the index, the rest is queued in both, and it says how many
// it cancelled. The log has a "delivery outcome ... result=cancelled"
// line for each recipient it cancelled and none for the refused message
// (it stays queued), whose refusal is logged instead.
func TestCancelStopsWhenTheSpoolRefuses(t *testing.T) {
	sp, avail := fillingSpool(t)
	const total = 3000
	spoolQueued(t, sp, total, 2)
	var logs testutil.SyncBuffer
	q := New(sp, &fakeDialer{}, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	q.stepRecipients = 500
	q.betweenSteps = func() { avail.Store(1000) }
	if n, err := q.Load(); n != total || err != nil {
		t.Fatalf("Load = %d, %v", n, err)
	}
	n, err := q.Cancel(Target{}, "k")
	var ie *IncompleteError
	if !errors.As(err, &ie) || ie.Done != n || n < 500 || n >= total || ie.Left < total-n {
		t.Fatalf("Cancel = %d, %v; want at least a step of %d cancelled and an IncompleteError", n, err, total)
	}
	cancelled, refused := 0, 0
	for _, l := range strings.Split(logs.String(), "\n") {
		switch {
		case strings.Contains(l, `msg="delivery outcome"`) && strings.Contains(l, "result=cancelled"):
			cancelled++
		case strings.Contains(l, `msg="cannot record an operator's action on a message`) && strings.Contains(l, "result=cancelled"):
			refused++
		}
	}
	if cancelled != n || refused != 1 {
		t.Fatalf("%d recipients cancelled; the log has %d outcome lines (want %d) and %d refusals (want 1)", n, cancelled, n, refused)
	}
	// The full spool refused the queue_cancelled event too: logged in
	// its place, and said in the error.
	if want := fmt.Sprintf(`msg="queue action stopped part way and its event was not recorded" component=queue event=queue_cancelled queue="" msgid="" filter="" by=k recipients_done=%d`, n); ie.EventErr == nil || !strings.Contains(logs.String(), want) {
		t.Fatalf("EventErr %v; the log lacks %q:\n%s", ie.EventErr, want, logs.String())
	}
	left := spoolKeys(t, sp)
	st := q.Stats()
	if len(left) != total-n || st.WaitingRecipients != total-n || st.Held != 0 {
		t.Fatalf("after the refused outcome: %d left in the spool, stats %+v; want %d", len(left), st, total-n)
	}
	q.mu.Lock()
	for i := range q.waiting {
		it := q.view(&q.waiting[i])
		for _, x := range it.indexes() {
			if _, ok := left[fmt.Sprintf("%s/%d", it.id, x)]; !ok {
				t.Errorf("the index waits for %s/%d, which the spool does not hold", it.id, x)
			}
		}
	}
	q.mu.Unlock()
}

// TestHoldInStepsWithDelivery: between two steps of a hold, a message of
// a later step is delivered and another one deferred again. The hold
// does not bring the delivered one back (its records stay deleted, the
// index does not hold it); the deferred one is held as the spool has it
// after its second attempt.
func TestHoldInStepsWithDelivery(t *testing.T) {
	sp := openSpool(t)
	fd := &fakeDialer{replies: map[string][]error{}}
	q := New(sp, fd, Options{Logger: slog.New(slog.DiscardHandler), IdleTimeout: 20 * time.Millisecond})
	q.stepRecipients = 3
	now := time.Now()
	var ids []string
	for i := range 12 {
		m, _ := putDeferred(t, sp, "s@src.test", "", now, fmt.Sprintf("r%d@x.test", i))
		ids = append(ids, m.ID)
	}
	if _, err := q.Load(); err != nil {
		t.Fatal(err)
	}
	q.Start()
	defer q.Stop(context.Background())
	// Loaded in order into a fresh index: the last messages are in the
	// last step.
	delivered, deferred := ids[11], ids[10]
	fd.replies["r10@x.test"] = []error{&pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 4, 1}, Message: "try later"}}
	steps := 0
	q.betweenSteps = func() {
		if steps++; steps != 1 {
			return
		}
		for _, id := range []string{delivered, deferred} {
			if n, err := q.Retry(Target{MessageID: id}, "k"); n != 1 || err != nil {
				t.Errorf("Retry of %s = %d, %v", id, n, err)
			}
		}
		testutil.WaitFor(t, "one delivered, one deferred again", func() bool {
			all := spoolKeys(t, sp)
			_, there := all[delivered+"/0"]
			_, rs, err := sp.Queued(deferred, []uint16{0})
			return !there && err == nil && rs[0].Attempts == 2 && q.Stats().Active == 0
		})
	}
	if n, err := q.Hold(Target{}, "k"); n != 11 || err != nil {
		t.Fatalf("Hold = %d, %v; want 11 (one was delivered meanwhile)", n, err)
	}
	all := spoolKeys(t, sp)
	if _, ok := all[delivered+"/0"]; ok {
		t.Fatal("the hold brought a delivered recipient back into the spool")
	}
	if h := heldKeys(q); len(h) != 11 || !maps.Equal(h, only(all)) || h[delivered+"/0"] {
		t.Fatalf("held: index %v, spool %v", h, all)
	}
	_, rs, err := sp.Queued(deferred, []uint16{0})
	if err != nil || !rs[0].Held || rs[0].Attempts != 2 || rs[0].LastReply == nil || rs[0].LastReply.Code != 451 {
		t.Fatalf("the deferred recipient as held: %+v, %v; want held after 2 attempts with the 451", rs, err)
	}
	if got := sentTo(fd); !slices.Equal(got, []string{"r11@x.test"}) {
		t.Fatalf("sent %v", got)
	}
}
