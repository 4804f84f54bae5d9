package queue

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/oklog/ulid/v2"
)

// TestMsgSlabReuseAndStaleRefs: a freed slot is reused by the next
// message, and a ref to the message that had it no longer resolves (no
// stale id: get is nil, id is "", its id is not found); ids that are not
// canonical ULIDs are kept too.
func TestMsgSlabReuseAndStaleRefs(t *testing.T) {
	var s msgSlab
	a, b := ulid.Make().String(), ulid.Make().String()
	ra := s.add(a, 10)
	rb := s.add(b, 20)
	if got, ok := s.lookup(a); !ok || got != ra || s.id(ra) != a || s.get(ra).received != 10 {
		t.Fatalf("lookup(a) = %v, %v; id %q", got, ok, s.id(ra))
	}
	s.get(ra).remaining = 3
	s.remove(ra)
	if s.get(ra) != nil || s.id(ra) != "" || s.len() != 1 {
		t.Fatalf("a removed: get %v, id %q, len %d", s.get(ra), s.id(ra), s.len())
	}
	if _, ok := s.lookup(a); ok {
		t.Fatal("a removed but found")
	}
	odd := "not-a-ulid"
	rc := s.add(odd, 30)
	if rc.slot != ra.slot || rc.gen == ra.gen {
		t.Fatalf("freed slot not reused with a new generation: %v after %v", rc, ra)
	}
	if s.get(ra) != nil || s.id(ra) != "" {
		t.Fatal("a ref to the slot's former message resolves to its new one")
	}
	if m := s.get(rc); m == nil || m.remaining != 0 || s.id(rc) != odd {
		t.Fatalf("new message in the reused slot: %+v, id %q", m, s.id(rc))
	}
	if got, ok := s.lookup(odd); !ok || got != rc {
		t.Fatal("odd id not found")
	}
	// A lower-case ULID is another id than its upper-case form.
	low := []byte(b)
	for i, c := range low {
		if 'A' <= c && c <= 'Z' {
			low[i] = c + 'a' - 'A'
		}
	}
	if _, ok := s.lookup(string(low)); ok {
		t.Fatal("lower-case form of b found as b")
	}
	s.remove(rb)
	s.remove(rc)
	s.remove(rc) // twice: ignored
	if s.len() != 0 || len(s.byID) != 0 || len(s.byOdd) != 0 || len(s.oddIDs) != 0 {
		t.Fatalf("slab not empty: len %d, maps %d %d %d", s.len(), len(s.byID), len(s.byOdd), len(s.oddIDs))
	}
	if (msgRef{}) == rc || s.get(msgRef{}) != nil {
		t.Fatal("the zero ref names a message")
	}
}

// TestWaitHeapOrder: records come out by due time, also after removals
// and init (what extractLocked does).
func TestWaitHeapOrder(t *testing.T) {
	var h waitHeap
	var dues []int64
	for i := 0; i < 2000; i++ {
		d := rand.Int64N(500) - 100
		dues = append(dues, d)
		pos := h.push(waitRec{due: d, one: uint16(i)})
		if h[pos].due != d || h[pos].one != uint16(i) || h[0].due > d {
			t.Fatalf("push returned position %d for due %d", pos, d)
		}
	}
	// Drop every third record, as a control action takes them.
	kept := h[:0]
	var want []int64
	for _, r := range h {
		if r.one%3 != 0 {
			kept = append(kept, r)
			want = append(want, r.due)
		}
	}
	h = kept
	h.init()
	slices.Sort(want)
	for i, w := range want {
		if got := h.pop().due; got != w {
			t.Fatalf("pop %d: due %d, want %d", i, got, w)
		}
	}
	if len(h) != 0 {
		t.Fatalf("%d records left", len(h))
	}
}

// TestDestTableFreesSlots: a destination's slot lives while a record
// names it and is reused afterwards; the slot holds the destination
// registered for the key last.
func TestDestTableFreesSlots(t *testing.T) {
	var tab destTable
	d1, d1b, d2 := &dest{key: "a"}, &dest{key: "a"}, &dest{key: "b"}
	s1 := tab.ref(d1)
	if tab.ref(d1b) != s1 || tab.at(s1) != d1b {
		t.Fatal("one key got two slots, or the slot kept the older object")
	}
	s2 := tab.ref(d2)
	if tab.unref(s1) != d1b || tab.at(s1) != d1b {
		t.Fatal("slot freed while a record names it")
	}
	tab.unref(s1)
	if _, ok := tab.byKey["a"]; ok || len(tab.free) != 1 {
		t.Fatal("slot not freed with its last record")
	}
	if s3 := tab.ref(&dest{key: "c"}); s3 != s1 || tab.at(s2) != d2 {
		t.Fatal("freed slot not reused")
	}
}

// TestIndexShrinksWhenDrained: once a large queue is settled the slab,
// its map and the heap give their memory back, and a ref from before
// does not resolve to a message added after.
func TestIndexShrinksWhenDrained(t *testing.T) {
	const n = 20_000
	var s msgSlab
	var h waitHeap
	refs := make([]msgRef, n)
	for i := range refs {
		refs[i] = s.add(ulid.Make().String(), int64(i))
		h.push(waitRec{due: int64(n - i), msg: refs[i]})
	}
	for _, r := range refs[:n-n/8] {
		s.remove(r)
		h.pop()
	}
	if s.peak > n/4 {
		t.Errorf("map of %d messages not made anew (peak %d)", len(s.byID), s.peak)
	}
	if cap(h) >= n/2 {
		t.Errorf("heap of %d records keeps capacity %d", len(h), cap(h))
	}
	for _, r := range refs[n-n/8:] {
		if s.get(r) == nil {
			t.Fatal("a queued message was lost when the map was made anew")
		}
		s.remove(r)
	}
	if len(s.recs) != 0 || s.byID != nil || s.len() != 0 {
		t.Errorf("drained slab keeps %d slots", len(s.recs))
	}
	r := s.add(ulid.Make().String(), 0)
	if r.slot != refs[0].slot || s.get(refs[0]) != nil {
		t.Fatal("a ref from before the slab emptied resolves to a new message")
	}
}
