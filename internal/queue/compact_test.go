package queue

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// openSpool opens a spool in a test directory, closed at the end.
func openSpool(t *testing.T) *spool.Spool {
	t.Helper()
	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	return sp
}

// waitingCompact reports how many items wait in the timer heap and
// whether every one of them holds recipients (a record is compact by
// construction: it has no pointer) of a queued message.
func waitingCompact(q *Queue) (int, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i := range q.waiting {
		r := &q.waiting[i]
		if q.recCount(r) == 0 || q.msgs.get(r.msg) == nil {
			return len(q.waiting), false
		}
	}
	return len(q.waiting), true
}

// TestDeferredItemIsCompactThenDelivered: a message deferred by a
// destination that is down waits compact (issue 21: a million queued),
// and once the destination is back its attempt reads the metadata and
// recipients back from the spool: the envelope carries the sender, the
// addresses and the RCPT parameters as spooled, and the attempt counts.
func TestDeferredItemIsCompactThenDelivered(t *testing.T) {
	sp := openSpool(t)
	fd := &fakeDialer{dialErr: &pipeline.Error{Code: 421, Enhanced: pipeline.EnhancedCode{4, 4, 1}, Message: "connection refused"}}
	q := New(sp, fd, Options{Logger: slog.New(slog.DiscardHandler), RetryInitial: time.Hour, RetryMax: time.Hour})
	q.Start()
	defer q.Stop(context.Background())

	m := &spool.Meta{ID: sp.NewID(), Sender: "s@a.test", Source: "smtp", Received: time.Now(), Size: 4,
		Params: pipeline.MailParams{Ret: "HDRS", EnvID: "env-1"}}
	b := sp.NewBatch()
	_ = b.PutMessage(m, []byte("data"))
	var rs []*spool.Recipient
	for i, a := range []string{"one@b.test", "two@b.test"} {
		r := &spool.Recipient{MsgID: m.ID, Idx: i, Address: a, Domain: "b.test", Route: pipeline.MX(),
			Params: pipeline.RcptParams{Notify: []string{"FAILURE"}, ORCPT: "rfc822;" + a}}
		_ = b.PutRecipient(r)
		rs = append(rs, r)
	}
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	q.Enqueue(m, rs)
	testutil.WaitFor(t, "the failed attempt", func() bool { return q.Stats().Waiting == 1 })
	if n, compact := waitingCompact(q); n != 1 || !compact {
		t.Fatalf("%d waiting items, compact %v; want one compact item", n, compact)
	}
	if qs := q.Queues(); len(qs) != 1 || qs[0].Waiting != 2 || qs[0].LastError == nil || qs[0].LastError.Code != 421 ||
		!qs[0].Oldest.Equal(time.Unix(0, m.Received.UnixNano())) {
		t.Fatalf("listing of the compact item: %+v", qs)
	}

	fd.mu.Lock()
	fd.dialErr = nil
	fd.mu.Unlock()
	if n, err := q.RetryQueue("", "k"); n != 2 || err != nil {
		t.Fatalf("RetryQueue = %d, %v", n, err)
	}
	testutil.WaitFor(t, "the delivery", func() bool { return q.Stats().Messages == 0 })
	fd.mu.Lock()
	defer fd.mu.Unlock()
	if len(fd.envs) != 1 {
		t.Fatalf("%d transactions, want 1", len(fd.envs))
	}
	env := fd.envs[0]
	if env.From != "s@a.test" || env.MsgID != m.ID || env.Params.Ret != "HDRS" || env.Params.EnvID != "env-1" || len(env.Rcpts) != 2 {
		t.Fatalf("envelope read back: %+v", env)
	}
	for i, rc := range env.Rcpts {
		if rc.Addr != rs[i].Address || rc.Attempt != 2 || len(rc.Params.Notify) != 1 || rc.Params.ORCPT != "rfc822;"+rs[i].Address {
			t.Errorf("recipient %d read back: %+v", i, rc)
		}
	}
}

// TestCompactItemMissingFromSpoolIsDropped: a waiting item whose records
// the spool no longer has (nothing can deliver it) is dropped when it is
// due, with the message, not retried for ever nor delivered empty.
func TestCompactItemMissingFromSpoolIsDropped(t *testing.T) {
	sp := openSpool(t)
	fd := &fakeDialer{}
	q := New(sp, fd, Options{Logger: slog.New(slog.DiscardHandler)})
	q.Start()
	defer q.Stop(context.Background())
	m, rs := put(t, sp, "s@a.test", "r@b.test")
	rs[0].NextAttempt = time.Now().Add(time.Hour)
	q.Enqueue(m, rs)
	if n, compact := waitingCompact(q); n != 1 || !compact {
		t.Fatalf("%d waiting items, compact %v; want one compact item", n, compact)
	}
	b := sp.NewBatch()
	b.DeleteRecipient(m.ID, 0)
	b.DeleteMessage(m.ID)
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	if n, err := q.RetryQueue("", "k"); n != 1 || err != nil {
		t.Fatalf("RetryQueue = %d, %v", n, err)
	}
	testutil.WaitFor(t, "the item dropped", func() bool { return q.Stats().Messages == 0 })
	if s := q.Stats(); s.Waiting != 0 || s.Ready != 0 {
		t.Fatalf("stats %+v after the drop", s)
	}
	fd.mu.Lock()
	defer fd.mu.Unlock()
	if len(fd.envs) != 0 {
		t.Fatalf("%d transactions for recipients not in the spool", len(fd.envs))
	}
}

// TestControlFilterReadsCompactItemsBack: a hold filtered on the sender
// or a recipient field matches waiting (compact) items by what the spool
// holds, takes only the matching recipients of a message, and leaves the
// rest compact.
func TestControlFilterReadsCompactItemsBack(t *testing.T) {
	sp := openSpool(t)
	q := New(sp, &fakeDialer{}, Options{Logger: slog.New(slog.DiscardHandler)})
	due := time.Now().Add(time.Hour)
	for _, s := range []string{"a@x.test", "b@x.test", "a@x.test"} {
		m, rs := put(t, sp, s, "r1@b.test", "r2@b.test")
		for _, r := range rs {
			r.NextAttempt = due
		}
		q.Enqueue(m, rs)
	}
	if n, compact := waitingCompact(q); n != 3 || !compact {
		t.Fatalf("%d waiting items, compact %v; want three compact items", n, compact)
	}
	if n, err := q.Hold(Target{Filter: spool.ListFilter{Sender: ptr("a@X.TEST"), Recipient: "r2@b.test"}}, "k"); n != 2 || err != nil {
		t.Fatalf("Hold = %d, %v; want the r2 recipients of a@x.test's two messages", n, err)
	}
	if s := q.Stats(); s.Held != 2 || s.Waiting != 3 {
		t.Fatalf("stats %+v, want 2 held and 3 items waiting", s)
	}
	if n, compact := waitingCompact(q); n != 3 || !compact {
		t.Fatalf("%d waiting items, compact %v after the hold", n, compact)
	}
	p, err := sp.List(spool.ListFilter{State: spool.StateHeld})
	if err != nil || len(p.Messages) != 2 {
		t.Fatalf("held in the spool: %+v, %v", p, err)
	}
	if n, err := q.Release(Target{Filter: spool.ListFilter{RcptDomain: "b.test"}}, "k"); n != 2 || err != nil {
		t.Fatalf("Release = %d, %v", n, err)
	}
	if qs := q.Queues(); len(qs) != 1 || qs[0].Waiting != 6 || qs[0].Held != 0 {
		t.Fatalf("listing after the release: %+v", qs)
	}
}

// nanos keeps the zero time (a recipient never attempted) before every
// other time and gives it back as the zero time; other times round-trip.
func TestNanos(t *testing.T) {
	now := time.Now()
	if n := nanos(time.Time{}); n >= nanos(time.Unix(0, 0)) || n >= nanos(now) || !timeOf(n).IsZero() {
		t.Errorf("zero time: %d, back %v", n, timeOf(n))
	}
	if got := timeOf(nanos(now)); !got.Equal(now) {
		t.Errorf("round trip of %v: %v", now, got)
	}
	far := time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)
	if nanos(far) <= nanos(now) {
		t.Errorf("year 3000 (%d) not after now (%d)", nanos(far), nanos(now))
	}
}
