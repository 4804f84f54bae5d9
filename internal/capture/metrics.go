package capture

import "log/slog"

// logMetrics writes one Info line of the store's Pebble figures since
// Open: what it wrote (write-ahead log, flushes, compactions; bytes)
// and how often it flushed and compacted. Close calls it; an operator
// (or a benchmark) reads the write amplification of the sandbox from it.
func (s *Store) logMetrics() {
	m := s.db.Metrics()
	t := m.Total()
	s.log.Info("sandbox store write figures since open",
		slog.Uint64("wal_bytes", m.WAL.BytesWritten),
		slog.Int64("flushes", m.Flush.Count),
		slog.Uint64("flushed_bytes", t.TableBytesFlushed-t.TableBytesIn+t.BlobBytesFlushed),
		slog.Int64("compactions", m.Compact.Count),
		slog.Uint64("compacted_bytes", t.TableBytesCompacted+t.BlobBytesCompacted),
		slog.Uint64("moved_bytes", t.TableBytesMoved),
		slog.Int64("l0_tables", m.Levels[0].TablesCount))
}
