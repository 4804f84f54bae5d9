package queue

// The queue's index of waiting recipients, in storage the garbage
// collector does not scan (issue 21: a million queued recipients).
//
// With a million recipients waiting for a destination that is down, a
// pointer per item, per message, per map entry and per heap slot made
// every collection mark about four million pointers (0.14 s of CPU per
// cycle); under a soft memory limit collections come often and
// acceptance slowed by half. Here:
//
//   - the timer heap is a slice of waitRec values (32 bytes, no pointer):
//     the due time, the message (msgRef), the destination (a slot of
//     destTable) and the recipient indexes (one inline; several behind a
//     key of Queue.more, rare);
//   - messages are msgRec values (40 bytes, no pointer) in msgSlab, their
//     ids kept as 16-byte binary ULIDs and found through a
//     map[[16]byte]uint32 (a map whose keys and values hold no pointer is
//     not scanned). An id that is not a canonical ULID (none the spool
//     makes) is kept in a side map;
//   - destinations are referenced by a small integer into destTable (a
//     few thousand pointers at most).
//
// The held items (control.go) and the back of a long ready list (behind
// readyLoaded items: a paused queue, a burst) are waitRec values too,
// in a plain slice (held, in no order) and a queue (dest.back, in
// order).
//
// An item leaves the heap as a compact *item (unpark) when it becomes
// due (or, behind a long ready list, moves to dest.back as the record
// it is: readyRec) or an operator's action takes it; the hot path
// (accept, deliver at once, the loaded front of a ready list) never
// enters the heap.
//
// Nothing here is safe for concurrent use: the Queue's mu guards it all.

import (
	"maps"

	"github.com/oklog/ulid/v2"
)

// msgRef names a message of a msgSlab: its slot and its generation (a
// number the slab gives each message it adds, in turn). A slot is reused
// once its message is settled; a ref held past that no longer resolves
// (get returns nil) instead of naming the slot's next message. The zero
// msgRef names no message.
type msgRef struct{ slot, gen uint32 }

// msgRec is what the queue keeps of a queued message while any of its
// recipients is queued: its id, when it was received (the listing's
// oldest message and the After/Before filters) and how many of its
// recipients are not settled yet. Its metadata is in the spool.
type msgRec struct {
	key       [16]byte // the binary ULID (odd: see msgSlab.oddIDs)
	received  int64    // Unix nanoseconds (nanos)
	remaining int32
	gen       uint32
	live      bool
	odd       bool
}

// msgSlab holds the queued messages (see the file comment).
type msgSlab struct {
	recs []msgRec
	free []uint32
	byID map[[16]byte]uint32
	// byOdd and oddIDs hold the ids that are not canonical ULIDs (tests,
	// spools written by hand): by id, and by slot.
	byOdd  map[string]uint32
	oddIDs map[uint32]string
	n      int
	// gen is the generation of the last message added.
	gen uint32
	// peak is the most messages byID held since it was made: Go's maps
	// do not shrink, so remove makes it anew once it holds a quarter.
	peak int
}

// ulidKey is id's binary ULID when id is a canonical one (26 characters
// of upper-case Crockford base 32, as spool.NewID makes): one that
// encodes back to id, so that a key names one id only.
func ulidKey(id string) ([16]byte, bool) {
	if len(id) != ulid.EncodedSize {
		return [16]byte{}, false
	}
	u, err := ulid.ParseStrict(id)
	if err != nil {
		return [16]byte{}, false
	}
	var buf [ulid.EncodedSize]byte
	if u.MarshalTextTo(buf[:]) != nil || string(buf[:]) != id {
		return [16]byte{}, false
	}
	return u, true
}

// lookup finds the message id.
func (s *msgSlab) lookup(id string) (msgRef, bool) {
	var (
		slot uint32
		ok   bool
	)
	if k, isULID := ulidKey(id); isULID {
		slot, ok = s.byID[k]
	} else {
		slot, ok = s.byOdd[id]
	}
	if !ok {
		return msgRef{}, false
	}
	return msgRef{slot, s.recs[slot].gen}, true
}

// add stores a new message (id not present: see lookup) with no
// recipient counted yet.
func (s *msgSlab) add(id string, received int64) msgRef {
	slot := allocSlot(&s.recs, &s.free)
	r := &s.recs[slot]
	if s.gen++; s.gen == 0 { // wrapped: 0 is the zero msgRef's
		s.gen = 1
	}
	*r = msgRec{received: received, gen: s.gen, live: true}
	if k, ok := ulidKey(id); ok {
		r.key = k
		if s.byID == nil {
			s.byID = map[[16]byte]uint32{}
		}
		s.byID[k] = slot
	} else {
		r.odd = true
		if s.byOdd == nil {
			s.byOdd, s.oddIDs = map[string]uint32{}, map[uint32]string{}
		}
		s.byOdd[id], s.oddIDs[slot] = slot, id
	}
	s.n++
	s.peak = max(s.peak, len(s.byID))
	return msgRef{slot, r.gen}
}

// get is ref's message, nil when ref names no queued message. The
// pointer is valid until the next add.
func (s *msgSlab) get(ref msgRef) *msgRec {
	if int(ref.slot) >= len(s.recs) {
		return nil
	}
	r := &s.recs[ref.slot]
	if !r.live || r.gen != ref.gen {
		return nil
	}
	return r
}

// id is ref's message id, "" when ref names no queued message.
func (s *msgSlab) id(ref msgRef) string {
	r := s.get(ref)
	switch {
	case r == nil:
		return ""
	case r.odd:
		return s.oddIDs[ref.slot]
	}
	return ulid.ULID(r.key).String()
}

// remove forgets ref's message and frees its slot; a ref naming no
// queued message is ignored.
func (s *msgSlab) remove(ref msgRef) {
	r := s.get(ref)
	if r == nil {
		return
	}
	if r.odd {
		delete(s.byOdd, s.oddIDs[ref.slot])
		delete(s.oddIDs, ref.slot)
	} else {
		delete(s.byID, r.key)
	}
	r.live, r.odd, r.key = false, false, [16]byte{}
	s.free = append(s.free, ref.slot)
	s.n--
	switch {
	case s.n == 0:
		// Drained: give the memory of a large queue back.
		*s = msgSlab{gen: s.gen}
	case s.peak >= shrinkMin && len(s.byID) < s.peak/4:
		m := make(map[[16]byte]uint32, len(s.byID))
		maps.Copy(m, s.byID)
		s.byID, s.peak = m, len(m)
	}
}

// shrinkMin is the size below which the index's maps and slices are not
// made smaller when they empty.
const shrinkMin = 4096

// allocSlot takes a slot of *slots from the free list, or a new one at
// the end; the slot holds what its last user left (or the zero value).
func allocSlot[T any](slots *[]T, free *[]uint32) uint32 {
	if n := len(*free); n > 0 {
		slot := (*free)[n-1]
		*free = (*free)[:n-1]
		return slot
	}
	var zero T
	*slots = append(*slots, zero)
	return uint32(len(*slots) - 1)
}

// len is how many messages are queued.
func (s *msgSlab) len() int { return s.n }

// destTable numbers the destinations of waiting records: a slot per
// destination key, counting the records that name it, freed with the
// last of them.
type destTable struct {
	slots []destSlot
	free  []uint32
	byKey map[string]uint32
}

type destSlot struct {
	d    *dest
	refs int32
}

// ref is the slot of d's key, counting one more record; the slot holds
// d from now on (the object registered for the key last).
func (t *destTable) ref(d *dest) uint32 {
	slot, ok := t.byKey[d.key]
	if !ok {
		slot = allocSlot(&t.slots, &t.free)
		if t.byKey == nil {
			t.byKey = map[string]uint32{}
		}
		t.byKey[d.key] = slot
	}
	t.slots[slot].d = d
	t.slots[slot].refs++
	return slot
}

// at is the destination in slot.
func (t *destTable) at(slot uint32) *dest { return t.slots[slot].d }

// unref is the destination in slot, counting one record less.
func (t *destTable) unref(slot uint32) *dest {
	s := &t.slots[slot]
	d := s.d
	if s.refs--; s.refs <= 0 {
		delete(t.byKey, d.key)
		*s = destSlot{}
		t.free = append(t.free, slot)
	}
	return d
}

// waitRec is an item in the timer heap (see the file comment).
type waitRec struct {
	due  int64 // Unix nanoseconds (nanos)
	msg  msgRef
	dest uint32 // slot in Queue.destTab
	// more is the key in Queue.more of the recipient indexes when there
	// are several; 0: one (one) or none.
	more   uint32
	one    uint16
	single bool
}

// waitHeap is the timer heap: a binary min-heap of waitRec by due time.
type waitHeap []waitRec

// push adds r and returns its position (0: it is due first).
func (h *waitHeap) push(r waitRec) int {
	*h = append(*h, r)
	return h.up(len(*h) - 1)
}

// shrunk is rs, or a copy of it in a smaller array once a quarter of
// its array is used (a million released or taken out of a list).
func shrunk[T any](rs []T) []T {
	if c := cap(rs); c >= shrinkMin && len(rs) < c/4 {
		if len(rs) == 0 {
			return nil
		}
		return append(make([]T, 0, 2*len(rs)), rs...)
	}
	return rs
}

// pop removes and returns the record due first; h must not be empty.
// The slice is made smaller once a quarter of it is used.
func (h *waitHeap) pop() waitRec {
	old := *h
	n := len(old) - 1
	top := old[0]
	old[0] = old[n]
	*h = shrunk(old[:n])
	h.down(0)
	return top
}

func (h waitHeap) up(i int) int {
	for i > 0 {
		p := (i - 1) / 2
		if h[p].due <= h[i].due {
			break
		}
		h[p], h[i] = h[i], h[p]
		i = p
	}
	return i
}

func (h waitHeap) down(i int) {
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		c := l
		if r := l + 1; r < n && h[r].due < h[l].due {
			c = r
		}
		if h[i].due <= h[c].due {
			return
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
}

// init restores the heap order after records were changed or removed.
func (h waitHeap) init() {
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

// park is the record of it, compact, entering the timer heap. q.mu held.
func (q *Queue) park(it *item) waitRec {
	it.compact()
	r := waitRec{due: it.due, msg: it.msg, dest: q.destTab.ref(it.dest), one: it.one, single: it.single}
	if it.more != nil {
		if q.more == nil {
			q.more = map[uint32]*[]uint16{}
		}
		for q.moreSeq++; q.moreSeq == 0 || q.more[q.moreSeq] != nil; q.moreSeq++ {
		}
		q.more[q.moreSeq] = it.more
		r.more = q.moreSeq
	}
	return r
}

// view is r as a compact item, r staying in the heap. q.mu held.
func (q *Queue) view(r *waitRec) *item {
	it := &item{msg: r.msg, id: q.msgs.id(r.msg), dest: q.destTab.at(r.dest), due: r.due, one: r.one, single: r.single}
	if r.more != 0 {
		it.more = q.more[r.more]
	}
	return it
}

// unpark is r as a compact item, r leaving the heap. q.mu held.
func (q *Queue) unpark(r waitRec) *item {
	it := q.view(&r)
	q.destTab.unref(r.dest)
	if r.more != 0 {
		delete(q.more, r.more)
	}
	return it
}

// pushReady appends it to d's ready list: as an item while fewer than
// readyLoaded are ready, behind them as a compact record (d.back). q.mu
// held.
func (q *Queue) pushReady(d *dest, it *item) {
	it.dest = d
	if len(d.ready) < readyLoaded && len(d.back) == 0 {
		d.ready = append(d.ready, it)
		return
	}
	d.back = append(d.back, q.park(it))
}

// readyRec appends the record r, taken from the timer heap, to its
// destination's ready list (the live one, Queue.live) and returns that
// destination: as an item, or behind the loaded items as the record it
// is (pushReady's rule) without unparking and parking it again. q.mu
// held.
func (q *Queue) readyRec(r waitRec) *dest {
	d := q.live(q.destTab.at(r.dest))
	if len(d.ready) < readyLoaded && len(d.back) == 0 {
		it := q.unpark(r)
		it.dest = d
		d.ready = append(d.ready, it)
		return d
	}
	q.destTab.slots[r.dest].d = d // as park's destTable.ref
	d.back = append(d.back, r)
	return d
}

// readyLen is how many items are ready for d. q.mu held.
func readyLen(d *dest) int { return len(d.ready) + len(d.back) }

// refill moves records from the back of d's ready list to its front
// until readyLoaded items are there or the back is empty. q.mu held.
func (q *Queue) refill(d *dest) {
	for len(d.ready) < readyLoaded && len(d.back) > 0 {
		it := q.unpark(d.back[0])
		d.back[0] = waitRec{}
		d.back = d.back[1:]
		it.dest = d
		d.ready = append(d.ready, it)
	}
	if len(d.back) == 0 {
		d.back = nil // the array of a drained million
	}
}

// takeReady empties d's ready list and returns its items in order. q.mu
// held.
func (q *Queue) takeReady(d *dest) []*item {
	out := d.ready
	for _, r := range d.back {
		it := q.unpark(r)
		it.dest = d
		out = append(out, it)
	}
	d.ready, d.back = nil, nil
	return out
}

// count is how many recipients r holds. q.mu held.
func (q *Queue) recCount(r *waitRec) int {
	switch {
	case r.single:
		return 1
	case r.more != 0:
		if p := q.more[r.more]; p != nil {
			return len(*p)
		}
	}
	return 0
}

// received is when ref's message was received (nanos), 0 when it is not
// queued. q.mu held.
func (q *Queue) received(ref msgRef) int64 {
	if m := q.msgs.get(ref); m != nil {
		return m.received
	}
	return 0
}

// settled counts n recipients of ref's message settled (or dropped) and
// forgets the message with its last one; it reports whether that was
// the last. q.mu held.
func (q *Queue) settled(ref msgRef, n int) bool {
	m := q.msgs.get(ref)
	if m == nil || n <= 0 {
		return false
	}
	m.remaining -= int32(n)
	if m.remaining > 0 {
		return false
	}
	q.msgs.remove(ref)
	return true
}
