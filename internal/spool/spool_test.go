package spool

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

func open(t testing.TB, dir string) *Spool {
	t.Helper()
	s, err := Open(dir, Options{Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func accept(t testing.TB, s *Spool, nrcpt int) string {
	t.Helper()
	id := s.NewID()
	b := s.NewBatch()
	if err := b.PutMessage(&Meta{ID: id, Sender: "a@x.test", Received: time.Now(), Size: 5}, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < nrcpt; i++ {
		addr := fmt.Sprintf("r%d@y.test", i)
		if err := b.PutRecipient(&Recipient{MsgID: id, Idx: i, Address: addr, Domain: "y.test", Route: pipeline.MX()}); err != nil {
			t.Fatal(err)
		}
		b.AddEvent(&pipeline.Event{Type: pipeline.EventReceived, MessageID: id, Recipient: addr})
	}
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	return id
}

func TestAcceptScanAndRestart(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	id1 := accept(t, s, 2)
	id2 := accept(t, s, 1)
	// Deliver recipient 0 of message 1.
	b := s.NewBatch()
	b.DeleteRecipient(id1, 0)
	b.AddEvent(&pipeline.Event{Type: pipeline.EventDelivered, MessageID: id1, Recipient: "r0@y.test"})
	if err := b.Commit(false); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir)
	defer s.Close()
	var got []string
	err := s.ScanRecipients(func(m *Meta, r *Recipient) error {
		if m.ID != r.MsgID || m.Sender != "a@x.test" || r.Route.Kind != pipeline.RouteMX {
			t.Errorf("bad record %+v %+v", m, r)
		}
		got = append(got, fmt.Sprintf("%s/%d/%s", r.MsgID, r.Idx, r.Address))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{id1 + "/1/r1@y.test", id2 + "/0/r0@y.test"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("scan = %v, want %v", got, want)
	}
	body, err := s.Body(id2)
	if err != nil || string(body) != "hello" {
		t.Fatalf("body = %q, %v", body, err)
	}
	// The outbox survived the restart and the sequence continues after it.
	first, _ := s.FirstOutboxSeq()
	evs, err := s.ReadOutbox(first, 100)
	if err != nil || len(evs) != 4 {
		t.Fatalf("outbox = %d events, %v", len(evs), err)
	}
	accept(t, s, 1)
	evs2, _ := s.ReadOutbox(first, 100)
	if len(evs2) != 5 || evs2[4].Seq <= evs[3].Seq {
		t.Fatalf("sequence did not continue: %+v", evs2)
	}
	var ev pipeline.Event
	if err := json.Unmarshal(evs[0].JSON, &ev); err != nil || ev.Schema != 1 || ev.EventID == "" || ev.Node != "n1" || ev.Type != "received" {
		t.Fatalf("event = %+v, %v", ev, err)
	}
	h, err := s.History(id1)
	if err != nil || len(h) != 3 || h[2].Type != "delivered" {
		t.Fatalf("history = %+v, %v", h, err)
	}
	// Ack removes exported events; reading again starts after them.
	if err := s.AckOutbox(evs2); err != nil {
		t.Fatal(err)
	}
	if rest, _ := s.ReadOutbox(0, 100); len(rest) != 0 {
		t.Fatalf("acked events still readable: %d", len(rest))
	}
	// Pruning history older than now removes it.
	if err := s.PruneHistory(time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if h, _ := s.History(id1); len(h) != 0 {
		t.Fatalf("history after prune = %d", len(h))
	}
}

// Concurrent committers must never let the outbox reader skip an event: a
// reader that only advances its cursor must eventually see every event.
func TestOutboxNeverSkipsConcurrentCommits(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	const writers, per = 8, 50
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				b := s.NewBatch()
				b.AddEvent(&pipeline.Event{Type: "deferred", MessageID: "m"})
				b.AddEvent(&pipeline.Event{Type: "deferred", MessageID: "m"})
				if err := b.Commit(i%2 == 0); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	seen := map[uint64]bool{}
	var cursor uint64 = 1
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	finished := false
	for !finished {
		select {
		case <-done:
			finished = true
		default:
		}
		evs, err := s.ReadOutbox(cursor, 37)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			if e.Seq != cursor {
				t.Fatalf("gap: got seq %d, expected %d", e.Seq, cursor)
			}
			seen[e.Seq] = true
			cursor = e.Seq + 1
		}
	}
	for {
		evs, _ := s.ReadOutbox(cursor, 1000)
		if len(evs) == 0 {
			break
		}
		for _, e := range evs {
			seen[e.Seq] = true
			cursor = e.Seq + 1
		}
	}
	if len(seen) != writers*per*2 {
		t.Fatalf("saw %d events, want %d", len(seen), writers*per*2)
	}
}

// BenchmarkAcceptSync measures synced acceptance of a 2 KB message with one
// recipient from parallel writers (group commit).
func BenchmarkAcceptSync(b *testing.B) {
	for _, size := range []int{2048, 51200} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			s := open(b, b.TempDir())
			defer s.Close()
			data := make([]byte, size)
			b.SetParallelism(10) // 20 writers on 2 cores
			b.SetBytes(int64(size))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					id := s.NewID()
					bt := s.NewBatch()
					_ = bt.PutMessage(&Meta{ID: id, Sender: "a@x.test", Received: time.Now()}, data)
					_ = bt.PutRecipient(&Recipient{MsgID: id, Address: "b@y.test", Domain: "y.test", Route: pipeline.MX()})
					bt.AddEvent(&pipeline.Event{Type: "received", MessageID: id, Recipient: "b@y.test"})
					if err := bt.Commit(true); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

func TestIdempotencyRecords(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	now := time.Now()
	b := s.NewBatch()
	if err := b.PutIdempotency("acme/k1", []byte(`{"id":"1"}`), now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	_ = b.PutIdempotency("acme/old", []byte(`{}`), now.Add(-time.Second))
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	if v, ok, err := s.GetIdempotency("acme/k1", now); !ok || err != nil || string(v) != `{"id":"1"}` {
		t.Fatalf("get = %s %v %v", v, ok, err)
	}
	if _, ok, _ := s.GetIdempotency("acme/old", now); ok {
		t.Fatal("expired record returned")
	}
	if _, ok, _ := s.GetIdempotency("acme/k1", now.Add(2*time.Hour)); ok {
		t.Fatal("record returned after its expiry")
	}
	if n, err := s.PruneIdempotency(now); err != nil || n != 1 {
		t.Fatalf("pruned %d, %v", n, err)
	}
}

// A message's history must keep every event, in order, across a restart
// with a drained outbox.
func TestHistorySurvivesDrainedOutboxRestart(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	id := accept(t, s, 1) // received
	b := s.NewBatch()
	b.AddEvent(&pipeline.Event{Type: pipeline.EventDeferred, MessageID: id, Recipient: "r0@y.test"})
	if err := b.Commit(false); err != nil {
		t.Fatal(err)
	}
	evs, _ := s.ReadOutbox(0, 100)
	if err := s.AckOutbox(evs); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, dir)
	defer s.Close()
	b = s.NewBatch()
	b.AddEvent(&pipeline.Event{Type: pipeline.EventDelivered, MessageID: id, Recipient: "r0@y.test"})
	if err := b.Commit(false); err != nil {
		t.Fatal(err)
	}
	h, _ := s.History(id)
	var types []string
	for _, e := range h {
		types = append(types, e.Type)
	}
	if fmt.Sprint(types) != "[received deferred delivered]" {
		t.Fatalf("history %v after a restart with a drained outbox", types)
	}
}

func TestCollectOrphans(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	keep := accept(t, s, 1)
	orphan := accept(t, s, 1)
	b := s.NewBatch()
	b.DeleteRecipient(orphan, 0) // its last outcome, without the deletion
	if err := b.Commit(false); err != nil {
		t.Fatal(err)
	}
	if n, err := s.CollectOrphans(); err != nil || n != 1 {
		t.Fatalf("collected %d, %v", n, err)
	}
	if _, err := s.Body(orphan); err == nil {
		t.Error("orphan body still there")
	}
	if _, err := s.Body(keep); err != nil {
		t.Errorf("a message with recipients was collected: %v", err)
	}
}

// TestPutMessageParts: a message stored in parts reads back as their
// concatenation, before and after a restart.
func TestPutMessageParts(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	id := s.NewID()
	b := s.NewBatch()
	if err := b.PutMessageParts(&Meta{ID: id, Sender: "a@x.test", Received: time.Now(), Size: 17}, []byte("Subject: x\r\n\r\n"), nil, []byte("body")); err != nil {
		t.Fatal(err)
	}
	_ = b.PutRecipient(&Recipient{MsgID: id, Address: "b@y.test", Domain: "y.test", Route: pipeline.MX()})
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	const want = "Subject: x\r\n\r\nbody"
	if got, err := s.Body(id); err != nil || string(got) != want {
		t.Fatalf("Body = %q, %v; want %q", got, err, want)
	}
	s.Close()
	s = open(t, dir)
	defer s.Close()
	if got, err := s.Body(id); err != nil || string(got) != want {
		t.Fatalf("after a restart, Body = %q, %v; want %q", got, err, want)
	}
}
