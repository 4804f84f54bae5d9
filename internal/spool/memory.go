package spool

// Memory is what the spool's storage engine holds in memory outside the
// Go heap (allocated with C's allocator in cgo builds), in bytes.
type Memory struct {
	// Memtables is the memtables' arenas, the live one, those waiting
	// to be flushed and the one kept for reuse (Pebble keeps one
	// flushed memtable's arena for the next): each is allocated at up
	// to memtable_mb and becomes resident as it is written.
	Memtables uint64
	// MemtableCount is how many memtables those bytes are.
	MemtableCount int64
	// Zombies is memtables flushed but still read by an iterator.
	Zombies uint64
	// BlockCache is the block cache's resident size.
	BlockCache int64
}

// MemoryUse reads the storage engine's memory from its metrics (no disk
// access). Safe for concurrent use; zero after a Pebble fatal error.
func (s *Spool) MemoryUse() Memory {
	m := s.metrics()
	if m == nil {
		return Memory{}
	}
	return Memory{Memtables: m.MemTable.Size, MemtableCount: m.MemTable.Count, Zombies: m.MemTable.ZombieSize, BlockCache: m.BlockCache.Size}
}
