package capture

import (
	"bytes"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// unpackOne rewrites captured message id as a store from before packed
// values held it (body and text as they are, under kBody and kText).
func unpackOne(t *testing.T, s *Store, tenant, id string) {
	t.Helper()
	body, ok, err := s.get(bodyZKey(id))
	if !ok || err != nil {
		t.Fatalf("packed body of %s: %v %v", id, ok, err)
	}
	text, ok, err := s.get(textZKey(tenant, id))
	if !ok || err != nil {
		t.Fatalf("packed text of %s: %v %v", id, ok, err)
	}
	b := s.db.NewBatch()
	defer b.Close()
	for _, kv := range []struct {
		old, packed []byte
		v           []byte
	}{{bodyKey(id), bodyZKey(id), body}, {textKey(tenant, id), textZKey(tenant, id), text}} {
		v, err := unpack(nil, kv.v)
		if err != nil {
			t.Fatal(err)
		}
		_ = b.Delete(kv.packed, nil)
		_ = b.Set(kv.old, v, nil)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
}

// TestPackedAndOlderValues: a store holding both packed captures and
// captures written before packing (the older one between two newer)
// lists, reads, searches and deletes them all alike after a reopen.
func TestPackedAndOlderValues(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	var ids []string
	for _, w := range []string{"alpha", "bravo", "charlie"} {
		sm, err := s.Put("acme", "", "a@s.test", []string{"b@d.test"}, msg("order "+w, "b@d.test", "shipped word "+w+" today"))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, sm.ID)
	}
	unpackOne(t, s, "acme", ids[1])
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, Options{})
	defer s.Close()
	for i, w := range []string{"alpha", "bravo", "charlie"} {
		raw, ok, err := s.Raw("acme", ids[i])
		if !ok || err != nil || !bytes.Contains(raw, []byte("shipped word "+w)) {
			t.Errorf("raw %d: %v %v %q", i, ok, err, raw)
		}
		p, err := s.Search("acme", Filter{Text: w}, 0, 10)
		if err != nil || len(p.Messages) != 1 || p.Messages[0].ID != ids[i] {
			t.Errorf("text=%s: %v %+v", w, err, p)
		}
		p, err = s.Search("acme", Filter{Text: `"word ` + w + `"`}, 0, 10)
		if err != nil || len(p.Messages) != 1 || p.Messages[0].ID != ids[i] {
			t.Errorf("phrase %s: %v %+v", w, err, p)
		}
	}
	p, err := s.Search("acme", Filter{Text: "shipped"}, 0, 10)
	if err != nil || len(p.Messages) != 3 || p.Messages[0].ID != ids[2] || p.Messages[2].ID != ids[0] {
		t.Fatalf("text=shipped: %v %+v", err, p)
	}
	// The readers of stored texts (phrase checks, text scans) read both.
	r, err := s.newTextReader("acme")
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range []string{"alpha", "bravo", "charlie"} {
		if ok, err := r.holds(ids[i], []string{"word " + w}); !ok || err != nil {
			t.Errorf("holds %d: %v %v", i, ok, err)
		}
		if ok, err := r.holds(ids[i], []string{"word zulu"}); ok || err != nil {
			t.Errorf("holds %d a phrase it lacks: %v %v", i, ok, err)
		}
	}
	r.close()
	s.mu.RLock()
	es := map[string]*entry{}
	for _, e := range s.tenants["acme"].entries {
		es[e.s.ID] = e
	}
	s.mu.RUnlock()
	held, err := s.scanTexts("acme", es, []string{"today"})
	if err != nil || len(held) != 3 {
		t.Errorf("scanTexts: %v, %d held", err, len(held))
	}
	if n, err := s.DeleteAll("acme"); n != 3 || err != nil {
		t.Fatalf("delete all: %d %v", n, err)
	}
	it, err := s.db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		t.Errorf("key %q left after delete all", it.Key())
	}
}

// A large message's compression buffer is not pooled: a pooled buffer
// taken and given back by every later capture stays alive for good, so
// one 50 MB message would pin tens of MB per processor for the life of
// the relay.
func TestPackDoesNotPoolLargeBuffers(t *testing.T) {
	b := new(pebble.Batch)
	setPacked(b, []byte("k"), bytes.Repeat([]byte("0123456789abcdef"), 1<<19)) // 8 MiB
	for range 4 {
		bp := packBufs.Get().(*[]byte)
		if cap(*bp) > maxPooledPack {
			t.Fatalf("a %d-byte buffer is back in the pool (at most %d)", cap(*bp), maxPooledPack)
		}
		defer packBufs.Put(bp)
	}
}
