package tracking

import (
	"hash/maphash"
	"sync"
)

// dedupe remembers which events were recorded, in bounded memory: two
// generations of at most max/2 hashed keys each; when the current one is
// full it becomes the old one and the oldest is dropped. A key forgotten
// that way can be recorded once more (at-least-once, like every event).
type dedupe struct {
	mu       sync.Mutex
	max      int
	seed     maphash.Seed
	cur, old map[uint64]struct{}
}

func newDedupe(max int) *dedupe {
	return &dedupe{max: max, seed: maphash.MakeSeed(), cur: map[uint64]struct{}{}}
}

// first reports whether key is new, and remembers it.
func (d *dedupe) first(key string) bool {
	h := maphash.String(d.seed, key)
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.cur[h]; ok {
		return false
	}
	if _, ok := d.old[h]; ok {
		return false
	}
	if len(d.cur) >= max(d.max/2, 1) {
		d.old, d.cur = d.cur, make(map[uint64]struct{}, len(d.cur))
	}
	d.cur[h] = struct{}{}
	return true
}

// forget drops key (its event could not be written).
func (d *dedupe) forget(key string) {
	h := maphash.String(d.seed, key)
	d.mu.Lock()
	delete(d.cur, h)
	delete(d.old, h)
	d.mu.Unlock()
}
