package spool

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/sluice-mta/sluice/internal/testutil"
)

// deliverSome accepts n messages of 2 KB (acceptSized) and delivers them
// (deliver): every key kind a relay writes under load, history included.
func deliverSome(t *testing.T, s *Spool, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		id, err := acceptSized(s, 2048)
		if err != nil {
			t.Fatal(err)
		}
		deliver(t, s, id)
	}
}

// TestTablesSplitAtKind: after flushes and compactions no sstable holds
// keys of two kinds (splitAtKind). Without the policy a flush of this mix
// is one table from bodies to history, and this fails.
func TestTablesSplitAtKind(t *testing.T) {
	s, err := Open(t.TempDir(), Options{Node: "n1", MinFree: -1, MemtableMB: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for round := 0; round < 3; round++ {
		deliverSome(t, s, 300)
		if err := s.db.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.db.Compact(context.Background(), []byte{0}, []byte{0xff}, false); err != nil {
		t.Fatal(err)
	}
	deliverSome(t, s, 300)
	// Some mail stays queued: delivered mail leaves only tombstones, which
	// a background compaction into L6 may drop with every table of their
	// kind before SSTables looks (1 run in 40 on a busy machine).
	queueSome(t, s, 20)
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	levels, err := s.db.SSTables()
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[byte]bool{}
	for l, tables := range levels {
		for _, tb := range tables {
			lo, hi := tb.Smallest.UserKey, tb.Largest.UserKey
			if len(lo) == 0 || len(hi) == 0 || lo[0] != hi[0] {
				t.Errorf("L%d table %s spans kinds: %q .. %q", l, tb.FileNum, lo, hi)
				continue
			}
			kinds[lo[0]] = true
		}
	}
	for _, k := range []byte{kBody, kHistory} {
		if !kinds[k] {
			t.Errorf("no table of kind %q: the test wrote none (kinds %v)", k, kinds)
		}
	}
}

// TestReclaimLeavesHistory: Reclaim compacts the kinds delivery deletes
// from, one at a time, and does not rewrite the history tables.
func TestReclaimLeavesHistory(t *testing.T) {
	s, err := Open(t.TempDir(), Options{Node: "n1", MinFree: -1, MemtableMB: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	deliverSome(t, s, 500)
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Compact(context.Background(), []byte{0}, []byte{0xff}, false); err != nil {
		t.Fatal(err)
	}
	history := func() map[string]bool {
		levels, err := s.db.SSTables()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, tables := range levels {
			for _, tb := range tables {
				if k := tb.Smallest.UserKey; len(k) > 0 && k[0] == kHistory {
					out[tb.FileNum.String()] = true
				}
			}
		}
		return out
	}
	before := history()
	if len(before) == 0 {
		t.Fatal("no history table to watch")
	}
	deliverSome(t, s, 200)
	if ok, err := s.Reclaim(context.Background(), true); err != nil || !ok {
		t.Fatalf("Reclaim = %v, %v; want a compaction", ok, err)
	}
	after := history()
	if w := s.EngineWork(); w.FlushedBytes == 0 || w.CompactedBytes == 0 || w.Compactions == 0 || w.CompactionTime <= 0 {
		t.Errorf("EngineWork after flushes and compactions = %+v, want every figure above 0", w)
	}
	for f := range before {
		if !after[f] {
			t.Errorf("history table %s was rewritten by Reclaim (before %v, after %v)", f, before, after)
		}
	}
}

// TestEngineEventsLogged: with debug logging the storage engine's flushes
// appear in the spool's log, and a write stall is a warning with its
// reason, then one with its length.
func TestEngineEventsLogged(t *testing.T) {
	var buf testutil.SyncBuffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := Open(t.TempDir(), Options{Node: "n1", MinFree: -1, MemtableMB: 4, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	deliverSome(t, s, 50)
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	if out := buf.String(); !strings.Contains(out, "flushed 1 memtable") {
		t.Errorf("no flush line in the debug log:\n%s", out)
	}

	el := s.plog.events()
	el.WriteStallBegin(pebble.WriteStallBeginInfo{Reason: "memtable count limit reached"})
	el.WriteStallEnd()
	out := buf.String()
	for _, want := range []string{`level=WARN msg="spool write stall began`, `reason="memtable count limit reached"`, `level=WARN msg="spool write stall ended"`, ` took=`} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

// TestReclaimGap: after a compaction Reclaim does not compact again
// within reclaimGap however much was deleted, unless forced.
func TestReclaimGap(t *testing.T) {
	defer func(e int64) { reclaimEvery = e }(reclaimEvery)
	reclaimEvery = 10
	s, err := Open(t.TempDir(), Options{Node: "n1", MinFree: -1, MemtableMB: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	deliverSome(t, s, 20)
	if ok, err := s.Reclaim(context.Background(), false); err != nil || !ok {
		t.Fatalf("first Reclaim = %v, %v; want a compaction (no gap before the first)", ok, err)
	}
	deliverSome(t, s, 20)
	if ok, err := s.Reclaim(context.Background(), false); err != nil || ok {
		t.Fatalf("second Reclaim within the gap = %v, %v; want none", ok, err)
	}
	if ok, err := s.Reclaim(context.Background(), true); err != nil || !ok {
		t.Fatalf("forced Reclaim = %v, %v; want a compaction", ok, err)
	}
	deliverSome(t, s, 20)
	defer func(g time.Duration) { reclaimGap = g }(reclaimGap)
	reclaimGap = 0
	if ok, err := s.Reclaim(context.Background(), false); err != nil || !ok {
		t.Fatalf("Reclaim past the gap = %v, %v; want a compaction", ok, err)
	}
}

// TestPebbleLinesSampled: Pebble's error lines and the stall warnings
// are logged once per 10 s per text; the repeats are left out.
func TestPebbleLinesSampled(t *testing.T) {
	var buf testutil.SyncBuffer
	p := newPebbleLogger(slog.New(slog.NewTextHandler(&buf, nil)))
	for i := 0; i < 3; i++ {
		p.Errorf("background error: %d", i)
		p.warnSampled("spool write stall ended", "took", time.Millisecond)
	}
	out := buf.String()
	if n := strings.Count(out, "background error"); n != 1 || !strings.Contains(out, `level=ERROR msg="background error: 0"`) {
		t.Errorf("error lines: %d, want the first one only:\n%s", n, out)
	}
	if n := strings.Count(out, "stall ended"); n != 1 || !strings.Contains(out, "level=WARN") {
		t.Errorf("stall warnings: %d, want one:\n%s", n, out)
	}
}
