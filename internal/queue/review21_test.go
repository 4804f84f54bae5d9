package queue

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestOddIDsSeveralDestinationsRestart (issue 21 item 3 review): messages
// whose ids are not canonical ULIDs (the lower-case form of another
// message's id, a 26-character id that overflows a ULID, a short legacy
// id) next to canonical ones, each with recipients on three destinations,
// some deferred once, some held: the queue is stopped while they retry and
// a new queue loads the spool; an operator cancels one odd-id message by
// id and releases the held. Every other recipient is delivered exactly
// once, under its own message, and the spool ends empty.
func TestOddIDsSeveralDestinationsRestart(t *testing.T) {
	sp := openSpool(t)
	canon := sp.NewID()
	ids := []string{canon, strings.ToLower(canon), "8ZZZZZZZZZZZZZZZZZZZZZZZZZ", "legacy-1", sp.NewID(), sp.NewID()}
	const cancelled = "legacy-1"
	fd := &fakeDialer{replies: map[string][]error{}}
	want := map[string]bool{}
	b := sp.NewBatch()
	var all []*spool.Meta
	rcpts := map[string][]*spool.Recipient{}
	for n, id := range ids {
		m := &spool.Meta{ID: id, Sender: "s@src.test", Source: "smtp", Received: time.Now(), Size: 4}
		_ = b.PutMessage(m, []byte("data "+id))
		all = append(all, m)
		for i, dom := range []string{"a.test", "b.test", "a.test", "c.test"} {
			addr := "r" + string(rune('0'+i)) + "-" + string(rune('a'+n)) + "@" + dom
			r := &spool.Recipient{MsgID: id, Idx: i, Address: addr, Domain: dom, Route: pipeline.MX()}
			if i == 1 {
				fd.replies[addr] = []error{temp} // deferred once
			}
			if i == 3 && n%2 == 0 {
				r.Held = true
			}
			_ = b.PutRecipient(r)
			rcpts[id] = append(rcpts[id], r)
			if id != cancelled || i != 1 { // its others are delivered before the restart
				want[addr] = true
			}
		}
	}
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	o := Options{Logger: slog.New(slog.DiscardHandler), RetryInitial: time.Hour, RetryMax: time.Hour}
	q1 := New(sp, fd, o)
	q1.SetBouncer(fakeBouncer{})
	if n, err := q1.Load(); n != 4*len(ids) || err != nil {
		t.Fatalf("Load = %d, %v", n, err)
	}
	q1.Start()
	// The first attempts: every recipient not held is tried; those
	// deferred wait an hour.
	testutil.WaitFor(t, "first attempts", func() bool {
		fd.mu.Lock()
		sent := len(fd.sent) // r0, r2 of each, r3 of those not held
		fd.mu.Unlock()
		s := q1.Stats()
		return sent == 2*len(ids)+len(ids)/2 && s.Waiting == len(ids) && s.Held > 0
	})
	q1.Stop(context.Background())

	q2 := New(sp, fd, o)
	q2.SetBouncer(fakeBouncer{})
	if n, err := q2.Load(); n != len(ids)+len(ids)/2 || err != nil {
		t.Fatalf("Load after restart = %d, %v; want the deferred and the held", n, err)
	}
	q2.Start()
	defer q2.Stop(context.Background())
	if s := q2.Stats(); s.Messages != len(ids) {
		t.Fatalf("after restart %d messages indexed, want %d", s.Messages, len(ids))
	}
	if n, err := q2.Cancel(Target{MessageID: cancelled}, "ops"); err != nil || n != 1 {
		t.Fatalf("Cancel(%s) = %d, %v", cancelled, n, err)
	}
	if n, err := q2.Release(Target{}, "ops"); err != nil || n == 0 {
		t.Fatalf("Release = %d, %v", n, err)
	}
	if n, err := q2.Retry(Target{}, "ops"); err != nil || n == 0 {
		t.Fatalf("Retry = %d, %v", n, err)
	}
	testutil.WaitFor(t, "the queue to drain", func() bool { return q2.Stats().Messages == 0 })
	fd.mu.Lock()
	got := map[string]int{}
	for _, a := range fd.sent {
		got[a]++
	}
	fd.mu.Unlock()
	for a := range want {
		if got[a] != 1 {
			t.Errorf("%s delivered %d times, want once", a, got[a])
		}
	}
	for a, n := range got {
		if !want[a] {
			t.Errorf("%s (cancelled or unknown) delivered %d times", a, n)
		}
	}
	// Each recipient got its own message's data.
	fd.mu.Lock()
	for id, rs := range rcpts {
		for _, r := range rs {
			if d, ok := fd.data[r.Address]; ok && string(d) != "data "+id {
				t.Errorf("%s got %q, want its message %s", r.Address, d, id)
			}
		}
	}
	fd.mu.Unlock()
	if n := queuedRecipients(t, sp); n != 0 {
		t.Errorf("%d recipients left in the spool", n)
	}
	// A message whose last recipients settled in separate items leaves
	// the index before its deletion commits (queue.go, complete): wait
	// for the deletions rather than read the spool at once.
	testutil.WaitFor(t, "every settled message deleted from the spool", func() bool {
		for _, m := range all {
			if _, err := sp.Body(m.ID); err == nil {
				return false
			}
		}
		return true
	})
}

// TestControlChurnWithSlotReuse (issue 21 item 3 review): messages are
// enqueued, deferred once, delivered and settled (their slab slots and
// destination slots reused by the next ones) while an operator holds,
// releases, retries and cancels by filter and by the id of messages that
// may just have settled. Every recipient ends with exactly one final
// event (delivered or cancelled), a delivered one reached the next hop
// once, and nothing is left queued.
func TestControlChurnWithSlotReuse(t *testing.T) {
	sp := openSpool(t)
	fd := &fakeDialer{replies: map[string][]error{}}
	q := New(sp, fd, Options{Logger: slog.New(slog.DiscardHandler), RetryInitial: 20 * time.Millisecond, RetryMax: 20 * time.Millisecond})
	q.SetBouncer(fakeBouncer{})
	q.Start()
	defer q.Stop(context.Background())
	const msgs = 150
	doms := []string{"a.test", "b.test", "c.test"}
	ids := make(chan string, msgs)
	var all []*spool.Meta
	done := make(chan struct{})
	go func() {
		defer close(done)
		for n := 0; n < msgs; n++ {
			m := &spool.Meta{ID: sp.NewID(), Sender: "s@src.test", Source: "smtp", Received: time.Now(), Size: 4}
			if n%7 == 0 {
				m.ID = "legacy-" + m.ID[10:] // an odd id
			}
			b := sp.NewBatch()
			_ = b.PutMessage(m, []byte("data"))
			var rs []*spool.Recipient
			for i, dom := range doms {
				addr := "r" + string(rune('0'+i)) + "-" + m.ID + "@" + dom
				switch {
				case dom == "c.test" && n%2 == 0: // waiting while later messages come and go
					fd.mu.Lock()
					fd.replies[addr] = []error{temp, temp, temp}
					fd.mu.Unlock()
				case n%3 == i:
					fd.mu.Lock()
					fd.replies[addr] = []error{temp}
					fd.mu.Unlock()
				}
				r := &spool.Recipient{MsgID: m.ID, Idx: i, Address: addr, Domain: dom, Route: pipeline.MX()}
				_ = b.PutRecipient(r)
				rs = append(rs, r)
			}
			if err := b.Commit(false); err != nil {
				t.Error(err)
				return
			}
			all = append(all, m)
			q.Enqueue(m, rs)
			ids <- m.ID
		}
	}()
	cancelled := 0
	var recent []string
	for loop := true; loop; {
		select {
		case <-done:
			loop = false
		case id := <-ids:
			recent = append(recent, id)
		}
		_, _ = q.Hold(Target{Filter: spool.ListFilter{RcptDomain: "b.test"}}, "op")
		_, _ = q.Retry(Target{Filter: spool.ListFilter{Queue: "a.test"}}, "op")
		for _, back := range []int{4, len(recent) / 2} { // one likely settled already
			if back < 1 || back > len(recent) {
				continue
			}
			id := recent[len(recent)-back]
			n, err := q.Cancel(Target{MessageID: id, Filter: spool.ListFilter{RcptDomain: "c.test"}}, "op")
			if err != nil && err != ErrNotQueued {
				t.Errorf("cancel %s: %v", id, err)
			}
			cancelled += n
		}
		_, _ = q.Release(Target{Filter: spool.ListFilter{Queue: "b.test"}}, "op")
	}
	if _, err := q.Release(Target{}, "op"); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the queue to drain", func() bool { return q.Stats().Messages == 0 })
	fd.mu.Lock()
	sent := map[string]int{}
	for _, a := range fd.sent {
		sent[a]++
	}
	fd.mu.Unlock()
	t.Logf("%d recipients cancelled, %d delivered", cancelled, len(fd.sent))
	finals := 0
	for _, m := range all {
		byRcpt := map[string][]string{}
		h, err := sp.History(m.ID) // not events: odd ids are not in the event schema
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range h {
			if typ := e.Type; typ == "delivered" || typ == "cancelled" || typ == "bounced" || typ == "failed" {
				byRcpt[e.Recipient] = append(byRcpt[e.Recipient], typ)
			}
		}
		for i, dom := range doms {
			addr := "r" + string(rune('0'+i)) + "-" + m.ID + "@" + dom
			f := byRcpt[addr]
			if len(f) != 1 || f[0] == "delivered" && sent[addr] != 1 || f[0] == "cancelled" && sent[addr] != 0 {
				t.Errorf("%s: final events %v, sent %d times", addr, f, sent[addr])
			}
			finals += len(f)
			if len(f) == 1 && f[0] == "cancelled" {
				cancelled--
			}
		}
	}
	if cancelled != 0 || finals != msgs*len(doms) {
		t.Errorf("cancel counts off by %d; %d final events for %d recipients", cancelled, finals, msgs*len(doms))
	}
	if n := queuedRecipients(t, sp); n != 0 {
		t.Errorf("%d recipients left in the spool", n)
	}
}
