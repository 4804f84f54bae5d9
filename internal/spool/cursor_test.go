package spool

import (
	"encoding/binary"
	"encoding/json"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/sluice-mta/sluice/pipeline"
)

func addEvents(t *testing.T, s *Spool, n int, typ, msgID string) {
	t.Helper()
	b := s.NewBatch()
	for i := 0; i < n; i++ {
		b.AddEvent(&pipeline.Event{Type: typ, MessageID: msgID, Attempt: i})
	}
	if err := b.Commit(false); err != nil {
		t.Fatal(err)
	}
}

func readAll(t *testing.T, s *Spool, from uint64) []OutboxEvent {
	t.Helper()
	evs, err := s.ReadOutbox(from, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// Events carry their type and message id outside the JSON, and events
// stored by an older version (bare JSON) read the same.
func TestOutboxTypedFields(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	addEvents(t, s, 2, pipeline.EventDelivered, "m1")
	addEvents(t, s, 1, "complained", "m2") // a type the spool does not know
	// An event as an older version stored it: seq 4, bare JSON.
	legacy, _ := json.Marshal(&pipeline.Event{Schema: 1, Type: pipeline.EventBounced, MessageID: "m3"})
	s.seqMu.Lock()
	s.nextSeq++
	s.seqMu.Unlock()
	if err := s.db.Set(eventKey(4), legacy, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	evs := readAll(t, s, 0)
	want := []struct{ typ, id string }{{"delivered", "m1"}, {"delivered", "m1"}, {"complained", "m2"}, {"bounced", "m3"}}
	if len(evs) != len(want) {
		t.Fatalf("read %d events, want %d", len(evs), len(want))
	}
	for i, e := range evs {
		var ev pipeline.Event
		if err := json.Unmarshal(e.JSON, &ev); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if e.Seq != uint64(i+1) || e.Type != want[i].typ || e.MessageID != want[i].id || ev.Type != e.Type || ev.MessageID != e.MessageID {
			t.Errorf("event %d = seq %d %q %q (JSON %s), want %v", i, e.Seq, e.Type, e.MessageID, e.JSON, want[i])
		}
	}
}

func TestCursorsPersistAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	if _, ok, err := s.Cursor("file:a"); ok || err != nil {
		t.Fatalf("cursor of a new consumer: ok=%v err=%v", ok, err)
	}
	for name, v := range map[string]uint64{"file:a": 7, "on_event": 3, "gone": 5} {
		if err := s.SetCursor(name, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteCursor("gone"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, dir)
	defer s.Close()
	got, err := s.Cursors()
	if err != nil || len(got) != 2 || got["file:a"] != 7 || got["on_event"] != 3 {
		t.Fatalf("cursors after reopen = %v, %v", got, err)
	}
	if v, ok, _ := s.Cursor("file:a"); !ok || v != 7 {
		t.Fatalf("Cursor(file:a) = %d, %v", v, ok)
	}
}

// The event seq never restarts below an assigned one: not after the
// outbox was drained by PruneOutbox or AckOutbox, and never below a
// stored cursor.
func TestSeqMonotonicAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	addEvents(t, s, 5, pipeline.EventReceived, "m")
	if n, err := s.PruneOutbox(6); err != nil || n != 5 {
		t.Fatalf("pruned %d, %v", n, err)
	}
	s.Close()

	s = open(t, dir)
	if first, _ := s.FirstOutboxSeq(); first != 6 {
		t.Fatalf("after a drained restart the next seq is %d, want 6", first)
	}
	addEvents(t, s, 2, pipeline.EventReceived, "m") // 6, 7
	if err := s.AckOutbox(readAll(t, s, 0)); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = open(t, dir)
	addEvents(t, s, 1, pipeline.EventReceived, "m")
	if evs := readAll(t, s, 0); len(evs) != 1 || evs[0].Seq != 8 {
		t.Fatalf("after AckOutbox and a restart: %+v, want seq 8", evs)
	}
	// A cursor ahead of everything stored (its floor write lost, say)
	// still holds the sequence up.
	if err := s.SetCursor("x", 100); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Delete(seqFloorKey, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, dir)
	defer s.Close()
	addEvents(t, s, 1, pipeline.EventReceived, "m")
	if evs := readAll(t, s, 9); len(evs) != 1 || evs[0].Seq != 100 {
		t.Fatalf("after a restart with a cursor at 100: %+v", evs)
	}
}

func TestPruneOutbox(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	addEvents(t, s, 10, pipeline.EventDeferred, "m") // 1..10
	if n, err := s.PruneOutbox(4); err != nil || n != 3 {
		t.Fatalf("pruned %d, %v; want 3", n, err)
	}
	if first, _ := s.FirstOutboxSeq(); first != 4 {
		t.Fatalf("first = %d, want 4", first)
	}
	if n, _ := s.PruneOutbox(4); n != 0 {
		t.Fatalf("pruning again deleted %d", n)
	}
	// Beyond what was committed: clamped, so a later event survives.
	if n, err := s.PruneOutbox(1000); err != nil || n != 7 {
		t.Fatalf("pruned %d, %v; want 7", n, err)
	}
	addEvents(t, s, 1, pipeline.EventDeferred, "m")
	if evs := readAll(t, s, 0); len(evs) != 1 || evs[0].Seq != 11 {
		t.Fatalf("outbox after pruning everything and adding one: %+v", evs)
	}
	v, c, err := s.db.Get(seqFloorKey)
	if err != nil || binary.BigEndian.Uint64(v) != 11 {
		t.Fatalf("seq floor = %x, %v", v, err)
	}
	c.Close()
}
