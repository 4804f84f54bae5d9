package capture

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"github.com/klauspost/compress/s2"
)

// Captured bodies and texts are stored compressed (S2, Snappy's faster
// successor, klauspost/compress/s2) under their own key kinds, kBodyZ
// and kTextZ; stores written before hold them as they are under kBody
// and kText, and every read falls back to those. Compressing before the
// commit writes about a quarter of the bytes to the write-ahead log and
// the memtable for ordinary mail (fewer flushes, smaller compactions),
// and the store's tables are written without Pebble's own block
// compression, which would only pass over the packed values again.
const (
	kBodyZ = 'c'
	kTextZ = 'u'
)

func bodyZKey(id string) []byte         { return append([]byte{kBodyZ}, id...) }
func textZKey(tenant, id string) []byte { return tenantKey(kTextZ, tenant, id) }

// pack compresses a body or text for the store.
func pack(v []byte) []byte { return s2.Encode(nil, v) }

// unpack decompresses a value pack made.
func unpack(v []byte) ([]byte, error) {
	out, err := s2.Decode(nil, v)
	if err != nil {
		return nil, fmt.Errorf("sandbox store: corrupt packed value: %w", err)
	}
	return out, nil
}

// get reads key's value (a copy); ok false when it is absent.
func (s *Store) get(key []byte) ([]byte, bool, error) {
	v, c, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	out := bytes.Clone(v)
	c.Close()
	return out, true, nil
}

// body reads captured message id's bytes, packed or (an older store's)
// as they are.
func (s *Store) body(id string) ([]byte, bool, error) {
	v, ok, err := s.get(bodyZKey(id))
	if err != nil || ok {
		if ok {
			v, err = unpack(v)
		}
		return v, ok && err == nil, err
	}
	return s.get(bodyKey(id))
}

// valueText returns the searchable text of a kText or kTextZ value.
func valueText(kind byte, v []byte) ([]byte, error) {
	if kind == kTextZ {
		return unpack(v)
	}
	return v, nil
}
