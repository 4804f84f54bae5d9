package capture

import (
	"bytes"
	"errors"
	"fmt"
	"sync"

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

// packBufs holds the buffers setPacked compresses into (the batch
// copies the value, so a buffer is free again once Set returns), of at
// most maxPooledPack bytes.
var packBufs = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledPack is the largest buffer packBufs keeps (1 MiB). A pooled
// buffer that every capture takes and gives back is never freed, so a
// larger message's buffer is left to the garbage collector.
const maxPooledPack = 1 << 20

// setPacked sets key to v compressed, in b.
func setPacked(b *pebble.Batch, key, v []byte) {
	n := s2.MaxEncodedLen(len(v))
	if n < 0 { // too large to compress (over 4 GiB): never stored anyway
		_ = b.Set(key, s2.Encode(nil, v), nil)
		return
	}
	bp := packBufs.Get().(*[]byte)
	if cap(*bp) < n {
		*bp = make([]byte, n)
	}
	_ = b.Set(key, s2.Encode((*bp)[:n], v), nil)
	if cap(*bp) <= maxPooledPack {
		packBufs.Put(bp)
	}
}

// unpack decompresses a value setPacked made, into dst when it is large
// enough.
func unpack(dst, v []byte) ([]byte, error) {
	out, err := s2.Decode(dst, v)
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
// as they are. A packed value is decompressed from Pebble's buffer, not
// from a copy.
func (s *Store) body(id string) ([]byte, bool, error) {
	v, c, err := s.db.Get(bodyZKey(id))
	if errors.Is(err, pebble.ErrNotFound) {
		return s.get(bodyKey(id))
	}
	if err != nil {
		return nil, false, err
	}
	defer c.Close()
	out, err := unpack(nil, v)
	return out, err == nil, err
}

// valueText returns the searchable text of a kText or kTextZ value, v
// itself or decompressed into *buf (reused: the text is valid until the
// next call with buf).
func valueText(buf *[]byte, kind byte, v []byte) ([]byte, error) {
	if kind != kTextZ {
		return v, nil
	}
	out, err := unpack(*buf, v)
	if err == nil {
		*buf = out
	}
	return out, err
}

// kindSpans is the store's pebble.SpanPolicyFunc: the default policy,
// in spans that end where the key kind (the first byte) changes, so no
// table Pebble writes holds two kinds.
func kindSpans(start []byte) (pebble.SpanPolicy, []byte, error) {
	if len(start) == 0 || start[0] == 0xff {
		return pebble.SpanPolicy{}, nil, nil
	}
	return pebble.SpanPolicy{}, []byte{start[0] + 1}, nil
}
