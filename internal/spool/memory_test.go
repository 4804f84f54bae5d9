package spool

import "testing"

// TestMemoryUse: an open spool reports its memtable (one, at most
// memtable_mb) and a block cache that has read something.
func TestMemoryUse(t *testing.T) {
	s, err := Open(t.TempDir(), Options{Node: "n1", MinFree: -1, MemtableMB: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m := s.MemoryUse()
	if m.MemtableCount < 1 || m.Memtables == 0 || m.Memtables > uint64(m.MemtableCount)*4<<20 || m.Zombies != 0 || m.BlockCache < 0 {
		t.Fatalf("MemoryUse = %+v", m)
	}
}
