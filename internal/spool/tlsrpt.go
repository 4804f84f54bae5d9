package spool

// TLS reporting (internal/tlsrpt): the day's session counts per policy
// domain and which reports went out, so that a restart mid-day does not
// lose the day.
//
// Key layout:
//
//	T<key>   a tlsrpt row (JSON, opaque here); key is tlsrpt's

import (
	"bytes"

	"github.com/cockroachdb/pebble/v2"
)

const kTLSRPT = 'T'

// PutTLSReports writes rows (a nil value deletes the key) in one
// unsynced batch: the counts are statistics, a crash may lose the last
// flush interval of them.
func (s *Spool) PutTLSReports(rows map[string][]byte) error {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	return s.write(func() error {
		b := s.db.NewBatch()
		defer b.Close()
		for k, v := range rows {
			key := append([]byte{kTLSRPT}, k...)
			if v == nil {
				_ = b.Delete(key, nil)
			} else {
				_ = b.Set(key, v, nil)
			}
		}
		return b.Commit(pebble.NoSync)
	})
}

// TLSReports returns every stored tlsrpt row by key.
func (s *Spool) TLSReports() (map[string][]byte, error) {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{kTLSRPT}, UpperBound: []byte{kTLSRPT + 1}})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	out := map[string][]byte{}
	for ok := it.First(); ok; ok = it.Next() {
		out[string(it.Key()[1:])] = bytes.Clone(it.Value())
	}
	return out, it.Error()
}
