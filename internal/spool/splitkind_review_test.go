package spool

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/sluice-mta/sluice/pipeline"
)

// queueSome accepts n messages and leaves them queued; it returns their ids.
func queueSome(t *testing.T, s *Spool, n int) []string {
	t.Helper()
	var ids []string
	for i := 0; i < n; i++ {
		id := s.NewID()
		body := []byte(fmt.Sprintf("body of %s", id))
		b := s.NewBatch()
		_ = b.PutMessage(&Meta{ID: id, Sender: "a@x.test", Received: time.Now(), Size: len(body)}, body)
		_ = b.PutRecipient(&Recipient{MsgID: id, Idx: 0, Address: "r@y.test", Domain: "y.test", Route: pipeline.MX()})
		b.AddEvent(&pipeline.Event{Type: pipeline.EventReceived, MessageID: id, Recipient: "r@y.test"})
		if err := b.Commit(true); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// checkQueued: every id in ids is queued with its body and history.
func checkQueued(t *testing.T, s *Spool, ids []string) {
	t.Helper()
	n := 0
	if err := s.ScanQueued(func(m *Meta, r *Recipient) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != len(ids) {
		t.Errorf("ScanQueued saw %d recipients, want %d", n, len(ids))
	}
	for _, id := range ids {
		b, err := s.Body(id)
		if err != nil || string(b) != "body of "+id {
			t.Fatalf("Body(%s) = %q, %v", id, b, err)
		}
		h, err := s.History(id)
		if err != nil || len(h) != 1 {
			t.Fatalf("History(%s) = %d events, %v; want 1", id, len(h), err)
		}
	}
}

// spanningTables counts the sstables holding keys of two kinds.
func spanningTables(t *testing.T, db *pebble.DB) int {
	t.Helper()
	levels, err := db.SSTables()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, tables := range levels {
		for _, tb := range tables {
			lo, hi := tb.Smallest.UserKey, tb.Largest.UserKey
			if len(lo) == 0 || len(hi) == 0 || lo[0] != hi[0] {
				// A range tombstone cut at the next kind ends at
				// that kind's first key, exclusive.
				if len(lo) > 0 && tb.Largest.IsExclusiveSentinel() && bytes.Equal(hi, []byte{lo[0] + 1}) {
					continue
				}
				t.Logf("table %s spans kinds: %s .. %s", tb.FileNum, tb.Smallest, tb.Largest)
				n++
			}
		}
	}
	return n
}

// TestOpenSpoolFromBeforeSplit: a spool whose tables were written without
// splitAtKind (an older build: tables spanning every kind) opens, reads,
// takes mail, reclaims and ends with split tables, its mail intact.
func TestOpenSpoolFromBeforeSplit(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{Node: "n1", MinFree: -1, MemtableMB: 4})
	if err != nil {
		t.Fatal(err)
	}
	ids := queueSome(t, s, 100)
	deliverSome(t, s, 200)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The older build: Pebble's defaults, no span policy.
	db, err := pebble.Open(dir, &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Compact(context.Background(), []byte{0}, []byte{0xff}, false); err != nil {
		t.Fatal(err)
	}
	if spanningTables(t, db) == 0 {
		t.Fatal("the old-style compaction wrote no table spanning kinds")
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(dir, Options{Node: "n1", MinFree: -1, MemtableMB: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	checkQueued(t, s, ids)
	ids = append(ids, queueSome(t, s, 50)...)
	deliverSome(t, s, 200)
	if ok, err := s.Reclaim(context.Background(), true); err != nil || !ok {
		t.Fatalf("Reclaim = %v, %v", ok, err)
	}
	checkQueued(t, s, ids)
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Compact(context.Background(), []byte{0}, []byte{0xff}, false); err != nil {
		t.Fatal(err)
	}
	if n := spanningTables(t, s.db); n != 0 {
		t.Errorf("%d tables span kinds after a full compaction with the policy", n)
	}
	checkQueued(t, s, ids)
}

// TestDeleteRangeAcrossKinds: a range tombstone from one kind into
// another, and keys of length 1 and of kind 0xff, survive flushes and
// compactions that split at every kind: reads see exactly what was not
// deleted, and no table spans kinds.
func TestDeleteRangeAcrossKinds(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{Node: "n1", MinFree: -1, MemtableMB: 4})
	if err != nil {
		t.Fatal(err)
	}
	// Keys the spool never writes, so they do not disturb it: kinds
	// 'A'..'H', a one-byte key, and kind 0xff.
	var keys [][]byte
	for k := byte('A'); k <= 'H'; k++ {
		keys = append(keys, []byte{k})
		for i := 0; i < 200; i++ {
			keys = append(keys, []byte(fmt.Sprintf("%c%04d", k, i)))
		}
	}
	keys = append(keys, []byte{0xff}, []byte{0xff, 0xff, 1})
	for _, k := range keys {
		if err := s.db.Set(k, bytes.Repeat(k, 10), pebble.NoSync); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Compact(context.Background(), []byte{0}, []byte{0xff, 0xff, 0xff}, false); err != nil {
		t.Fatal(err)
	}
	lo, hi := []byte("B0100"), []byte("F0050")
	if err := s.db.DeleteRange(lo, hi, pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := spanningTables(t, s.db); n != 0 {
		t.Errorf("after the flush of a range tombstone across kinds, %d tables span kinds", n)
	}
	check := func(when string) {
		t.Helper()
		for _, k := range keys {
			deleted := bytes.Compare(k, lo) >= 0 && bytes.Compare(k, hi) < 0
			v, c, err := s.db.Get(k)
			switch {
			case deleted && err == nil:
				c.Close()
				t.Fatalf("%s: %q deleted by the range but still read", when, k)
			case !deleted && err != nil:
				t.Fatalf("%s: %q: %v", when, k, err)
			case !deleted:
				if !bytes.Equal(v, bytes.Repeat(k, 10)) {
					t.Fatalf("%s: %q = %q", when, k, v)
				}
				c.Close()
			}
		}
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{'A'}, UpperBound: []byte{'I'}})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for ok := it.First(); ok; ok = it.Next() {
			if bytes.Compare(it.Key(), lo) >= 0 && bytes.Compare(it.Key(), hi) < 0 {
				t.Errorf("%s: iterator sees deleted %q", when, it.Key())
			}
			n++
		}
		it.Close()
		if want := 8*201 - (100 + 3*201 + 51); n != want {
			t.Errorf("%s: iterator saw %d keys, want %d", when, n, want)
		}
	}
	check("after flush")
	if err := s.db.Compact(context.Background(), []byte{0}, []byte{0xff, 0xff, 0xff}, false); err != nil {
		t.Fatal(err)
	}
	check("after compaction")
	if n := spanningTables(t, s.db); n != 0 {
		t.Errorf("after compaction %d tables span kinds", n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir, Options{Node: "n1", MinFree: -1, MemtableMB: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check("after reopen")
}
