package queue

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// putDeferred spools a message whose recipients were attempted once and
// are due in an hour, received at recv.
func putDeferred(t *testing.T, sp *spool.Spool, sender, tenant string, recv time.Time, rcpts ...string) (*spool.Meta, []*spool.Recipient) {
	t.Helper()
	m := &spool.Meta{ID: sp.NewID(), Sender: sender, Tenant: tenant, Source: "smtp", Received: recv, Size: 4}
	b := sp.NewBatch()
	_ = b.PutMessage(m, []byte("Subject: x\r\n\r\ndata\r\n"))
	var rs []*spool.Recipient
	for i, a := range rcpts {
		_, dom, _ := pipeline.SplitAddress(a)
		r := &spool.Recipient{MsgID: m.ID, Idx: i, Address: a, Domain: dom, Route: pipeline.MX(), Attempts: 1,
			NextAttempt: time.Now().Add(time.Hour), LastReply: &pipeline.Response{Code: 451, Enhanced: "4.7.1", Text: "later"}}
		_ = b.PutRecipient(r)
		rs = append(rs, r)
	}
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	return m, rs
}

// adminEvents returns the outbox's events of type prefix "queue_" and the
// recipient events naming an operator, validated against the schema.
func adminEvents(t *testing.T, sp *spool.Spool) []pipeline.Event {
	t.Helper()
	obs, err := sp.ReadOutbox(0, 100000)
	if err != nil {
		t.Fatal(err)
	}
	var out []pipeline.Event
	for _, o := range obs {
		var ev pipeline.Event
		if err := json.Unmarshal(o.JSON, &ev); err != nil {
			t.Fatal(err)
		}
		if len(ev.Type) > 6 && ev.Type[:6] == "queue_" || ev.Metadata[AdminByKey] != "" {
			testutil.ValidateEventValue(t, &ev)
			out = append(out, ev)
		}
	}
	return out
}

func sentTo(fd *fakeDialer) []string {
	fd.mu.Lock()
	defer fd.mu.Unlock()
	return slices.Clone(fd.sent)
}

// TestControlHoldReleasePersist: hold by recipient domain keeps
// recipients from every attempt (a retry of everything passes them by);
// the hold and a pause are found again by a new queue on the same spool
// (a restart); release by message id puts one back with its backoff, a
// retry delivers it; the other stays held. Listing by state held sees
// exactly the held recipients; each action is an event naming the key.
func TestControlHoldReleasePersist(t *testing.T) {
	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	fd := &fakeDialer{}
	o := Options{IdleTimeout: 50 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)}
	q := New(sp, fd, o)
	now := time.Now()
	m1, _ := putDeferred(t, sp, "s@a.test", "", now, "a@x.test", "b@y.test")
	m2, _ := putDeferred(t, sp, "t@a.test", "", now, "c@x.test")
	if _, err := q.Load(); err != nil {
		t.Fatal(err)
	}
	q.Start()
	if n, err := q.Hold(Target{Filter: spool.ListFilter{RcptDomain: "X.test"}}, "key1"); n != 2 || err != nil {
		t.Fatalf("Hold moved %d (%v), want 2", n, err)
	}
	if st := q.Stats(); st.Held != 2 {
		t.Fatalf("stats: %+v", st)
	}
	if _, err := q.Pause("y.test", "key1"); err != nil {
		t.Fatal(err)
	}
	p, err := sp.List(spool.ListFilter{State: spool.StateHeld})
	if err != nil {
		t.Fatal(err)
	}
	var held []string
	for _, m := range p.Messages {
		for _, r := range m.Recipients {
			held = append(held, r.Address)
		}
	}
	slices.Sort(held)
	if !slices.Equal(held, []string{"a@x.test", "c@x.test"}) {
		t.Fatalf("listed held: %v", held)
	}
	if n, err := q.Retry(Target{}, "key1"); n != 1 || err != nil {
		t.Fatalf("Retry of everything moved %d (%v), want 1 (b@y.test; the held are not retried)", n, err)
	}
	if qs := q.Queues(); len(qs) != 2 || qs[0].Name != "x.test" || qs[0].Held != 2 || qs[1].Name != "y.test" || !qs[1].Paused || qs[1].Ready != 1 {
		t.Fatalf("queues: %+v", qs)
	}
	q.Stop(context.Background())
	if got := sentTo(fd); len(got) != 0 {
		t.Fatalf("delivered while held or paused: %v", got)
	}

	// A restart: the hold and the pause come back from the spool.
	q = New(sp, fd, o)
	if _, err := q.Load(); err != nil {
		t.Fatal(err)
	}
	q.Start()
	defer q.Stop(context.Background())
	if qs := q.Queues(); len(qs) != 2 || qs[0].Held != 2 || qs[0].Waiting != 0 || !qs[1].Paused || qs[1].Waiting != 1 {
		t.Fatalf("queues after restart: %+v", qs)
	}
	if _, err := q.Release(Target{MessageID: "01KB2T0A5V0W9X8Y7Z6A5B4C3D"}, "key1"); !errors.Is(err, ErrNotQueued) {
		t.Fatalf("Release of an unknown message: %v", err)
	}
	if n, err := q.Release(Target{MessageID: m1.ID}, "key2"); n != 1 || err != nil {
		t.Fatalf("Release of m1 moved %d (%v), want 1", n, err)
	}
	if qs := q.Queues(); qs[0].Held != 1 || qs[0].Waiting != 1 {
		t.Fatalf("released with its backoff: %+v", qs[0])
	}
	if _, err := q.Resume("y.test", "key2"); err != nil {
		t.Fatal(err)
	}
	if n, _ := q.Retry(Target{}, "key2"); n != 2 {
		t.Fatalf("retry moved %d, want 2 (a released, b)", n)
	}
	testutil.WaitFor(t, "a and b delivered", func() bool { return len(sentTo(fd)) == 2 })
	if got := sentTo(fd); slices.Contains(got, "c@x.test") {
		t.Fatalf("a held recipient was delivered: %v", got)
	}
	testutil.WaitFor(t, "only the held c left in the spool", func() bool {
		p, _ := sp.List(spool.ListFilter{})
		return len(p.Messages) == 1 && p.Messages[0].ID == m2.ID && p.Messages[0].Recipients[0].State == spool.StateHeld
	})
	if names, _ := sp.PausedQueues(); len(names) != 0 {
		t.Fatalf("paused after resume: %v", names)
	}
	var types []string
	for _, ev := range adminEvents(t, sp) {
		types = append(types, ev.Type+":"+ev.Metadata["by"]+":"+ev.Metadata["recipients"])
	}
	want := []string{"queue_held:key1:2", "queue_paused:key1:", "queue_retried:key1:1",
		"queue_released:key2:1", "queue_resumed:key2:", "queue_retried:key2:2"}
	if !slices.Equal(types, want) {
		t.Fatalf("admin events:\n got %q\nwant %q", types, want)
	}
}

// TestControlBounceCancelFilters: bounce by recipient sends the sender a
// DSN (through the Bouncer, as a failure would) and records bounced
// events naming the key, without suppressing the address; cancel by
// sender and age drops silently; filters by tenant and age leave other
// messages alone; a held recipient can be bounced.
func TestControlBounceCancelFilters(t *testing.T) {
	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	sp.SetSuppressionPolicy(spool.SuppressionPolicy{Enabled: true, Classes: []string{"PolicyRelated", "Uncategorized"}})
	fd := &fakeDialer{}
	q := newQueue(sp, fd, fakeBouncer{}, Options{IdleTimeout: 50 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	now := time.Now()
	old, _ := putDeferred(t, sp, "old@a.test", "acme", now.Add(-3*time.Hour), "r1@x.test", "r2@x.test")
	young, _ := putDeferred(t, sp, "old@a.test", "acme", now, "r3@x.test")
	other, _ := putDeferred(t, sp, "new@a.test", "", now, "r4@x.test", "r5@x.test")
	if _, err := q.Load(); err != nil {
		t.Fatal(err)
	}
	q.Start()
	defer q.Stop(context.Background())

	if n, _ := q.Hold(Target{MessageID: other.ID, Filter: spool.ListFilter{Recipient: "r5@X.TEST"}}, "k"); n != 1 {
		t.Fatalf("hold r5: %d", n)
	}
	// Bounce by recipient: r2 and the held r5.
	for _, r := range []string{"r2@x.test", "r5@x.test"} {
		if n, err := q.Bounce(Target{Filter: spool.ListFilter{Recipient: r}}, "k-bounce"); n != 1 || err != nil {
			t.Fatalf("Bounce %s: %d %v", r, n, err)
		}
	}
	testutil.WaitFor(t, "the DSNs delivered to the senders", func() bool {
		got := sentTo(fd)
		return slices.Contains(got, "old@a.test") && slices.Contains(got, "new@a.test")
	})
	if sup, err := sp.GetSuppression("acme", "r2@x.test"); err != nil || sup != nil {
		t.Fatalf("an operator's bounce suppressed the address: %+v %v", sup, err)
	}
	// Cancel by sender and age: only the old message's r1.
	older := spool.ListFilter{Sender: ptr("old@A.TEST"), Before: now.Add(-time.Hour), Tenant: ptr("acme")}
	if n, err := q.Cancel(Target{Filter: older}, "k-cancel"); n != 1 || err != nil {
		t.Fatalf("Cancel old: %d %v", n, err)
	}
	if st, err := sp.Status(old.ID); err != nil || st.InSpool {
		t.Fatalf("the old message is still spooled: %+v %v", st, err)
	}
	if n, _ := q.Cancel(Target{Filter: spool.ListFilter{Tenant: ptr("nobody")}}, "k"); n != 0 {
		t.Fatalf("cancel for another tenant took %d", n)
	}
	if p, _ := sp.List(spool.ListFilter{}); len(p.Messages) != 2 || p.Messages[0].ID != young.ID || p.Messages[1].ID != other.ID {
		t.Fatalf("left: %+v", p.Messages)
	}
	collect := func() []string {
		var got []string
		for _, ev := range adminEvents(t, sp) {
			switch ev.Type {
			case pipeline.EventBounced:
				if ev.BounceClass != "PolicyRelated" || ev.Response == nil || ev.Response.Code != 550 || ev.Attempt != 1 {
					t.Errorf("bounced event: %+v", ev)
				}
				got = append(got, ev.Type+":"+ev.Recipient+":"+ev.Metadata[AdminByKey])
			case pipeline.EventCancelled:
				got = append(got, ev.Type+":"+ev.Recipient+":"+ev.Metadata[AdminByKey])
			case pipeline.EventQueueBounced, pipeline.EventQueueCancelled:
				got = append(got, ev.Type+":"+ev.Metadata["by"]+":"+ev.Metadata["recipients"]+":"+ev.Metadata["filter"])
			}
		}
		return got
	}
	want := []string{"bounced:r2@x.test:k-bounce", "queue_bounced:k-bounce:1:rcpt=r2%40x.test",
		"bounced:r5@x.test:k-bounce", "queue_bounced:k-bounce:1:rcpt=r5%40x.test",
		"cancelled:r1@x.test:k-cancel", "queue_cancelled:k-cancel:1:before=" + url.QueryEscape(older.Before.UTC().Format(time.RFC3339Nano)) + "&sender=old%40A.TEST&tenant=acme",
		"queue_cancelled:k:0:tenant=nobody"}
	// The outbox shows an event once the commit pipeline has published its
	// sequence number, which may trail the action's return: poll.
	var got []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if got = collect(); slices.Equal(got, want) || time.Now().After(deadline) {
			break
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("events:\n got %q\nwant %q", got, want)
	}
}

func ptr(s string) *string { return &s }

// TestPauseAppliesAtLoad: a recipient that is due at a restart, in a
// queue paused before it, gets no attempt: Load knows the pauses before
// it queues the recipients (it started workers for them first, and a
// kill -9 during a paused incident sent the mail at the restart).
func TestPauseAppliesAtLoad(t *testing.T) {
	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	_, rs := putDeferred(t, sp, "s@a.test", "", time.Now(), "a@x.test")
	b := sp.NewBatch()
	rs[0].NextAttempt = time.Now().Add(-time.Minute) // due
	_ = b.PutRecipient(rs[0])
	b.SetPaused("x.test", true)
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	fd := &fakeDialer{}
	q := New(sp, fd, Options{IdleTimeout: 50 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if _, err := q.Load(); err != nil {
		t.Fatal(err)
	}
	if st := q.Stats(); st.Active != 0 {
		t.Fatalf("a worker started for a paused queue at Load: %+v", st)
	}
	q.Start()
	q.Stop(context.Background())
	if got := sentTo(fd); len(got) != 0 {
		t.Fatalf("delivered to a paused queue after a restart: %v", got)
	}
	if qs := q.Queues(); len(qs) != 1 || !qs[0].Paused || qs[0].Ready != 1 {
		t.Fatalf("queues: %+v", qs)
	}
}
