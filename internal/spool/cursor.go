package spool

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/sluice-mta/sluice/pipeline"
)

// Outbox consumers (event sinks, the on_event hooks) each keep their own
// cursor here: the seq of the next event they have not yet taken. The
// outbox is pruned below the slowest cursor with PruneOutbox.
const (
	kCursor = 'c' // c<name> → next seq (8 bytes, big endian)
	// kSeqFloor holds a seq below which no event seq will be assigned
	// again: written with every prune, so that the sequence stays
	// monotonic across restarts even when the outbox is empty.
	kSeqFloor = 'n'
)

func cursorKey(name string) []byte { return append([]byte{kCursor}, name...) }

var seqFloorKey = []byte{kSeqFloor}

// Cursor returns the stored cursor of consumer name: the seq of the next
// event it has not yet taken. ok is false when it has none.
func (s *Spool) Cursor(name string) (next uint64, ok bool, err error) {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	v, c, err := s.db.Get(cursorKey(name))
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	defer c.Close()
	if len(v) != 8 {
		return 0, false, fmt.Errorf("event cursor %q: corrupt value (%d bytes)", name, len(v))
	}
	return binary.BigEndian.Uint64(v), true, nil
}

// SetCursor stores consumer name's cursor. It does not sync: a crash can
// roll a cursor back (the consumer then takes some events again, at least
// once), never forward, and never behind a prune that relied on it (the
// prune is written after it, and the log replays in order).
func (s *Spool) SetCursor(name string, next uint64) error {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	return s.write(func() error {
		return s.db.Set(cursorKey(name), binary.BigEndian.AppendUint64(nil, next), pebble.NoSync)
	})
}

// DeleteCursor forgets consumer name's cursor (a consumer no longer
// configured).
func (s *Spool) DeleteCursor(name string) error {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	return s.write(func() error { return s.db.Delete(cursorKey(name), pebble.NoSync) })
}

// Cursors returns every stored cursor by consumer name.
func (s *Spool) Cursors() (map[string]uint64, error) {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{kCursor}, UpperBound: []byte{kCursor + 1}})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	out := map[string]uint64{}
	for it.First(); it.Valid(); it.Next() {
		if v := it.Value(); len(v) == 8 {
			out[string(it.Key()[1:])] = binary.BigEndian.Uint64(v)
		}
	}
	return out, it.Error()
}

// PruneOutbox deletes the outbox events with seq < below (clamped to the
// events already committed) and returns how many it deleted. Like
// AckOutbox it writes point deletions, starting from where the previous
// prune stopped, so it never scans its own tombstones. Call it with the
// slowest cursor of the configured consumers.
func (s *Spool) PruneOutbox(below uint64) (int, error) {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	below = min(below, s.safeSeq())
	s.pruneMu.Lock()
	defer s.pruneMu.Unlock()
	if below <= s.outboxLow {
		return 0, nil
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: eventKey(s.outboxLow), UpperBound: eventKey(below)})
	if err != nil {
		return 0, err
	}
	b := s.db.NewBatch()
	n := 0
	for it.First(); it.Valid(); it.Next() {
		_ = b.Delete(it.Key(), nil)
		n++
	}
	if err := it.Close(); err != nil {
		b.Close()
		return 0, err
	}
	s.raiseFloorLocked(b, below)
	if err := s.apply(b, pebble.NoSync); err != nil { // apply owns b
		return 0, err
	}
	s.outboxLow = below
	return n, nil
}

// raiseFloorLocked adds to b a write of the seq floor when next raises
// it. Call with pruneMu held.
func (s *Spool) raiseFloorLocked(b *pebble.Batch, next uint64) {
	if next > s.seqFloor {
		_ = b.Set(seqFloorKey, binary.BigEndian.AppendUint64(nil, next), nil)
		s.seqFloor = next
	}
}

// initSeq sets nextSeq, seqFloor and outboxLow at Open: the next event seq
// is above every stored event, the stored floor and every cursor.
func (s *Spool) initSeq() error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{kEvent}, UpperBound: []byte{kEvent + 1}})
	if err != nil {
		return err
	}
	next := uint64(1)
	first := uint64(0)
	if it.Last() {
		next = binary.BigEndian.Uint64(it.Key()[1:]) + 1
		it.First()
		first = binary.BigEndian.Uint64(it.Key()[1:])
	}
	if err := it.Close(); err != nil {
		return err
	}
	v, c, err := s.db.Get(seqFloorKey)
	switch {
	case err == nil:
		if len(v) == 8 {
			s.seqFloor = binary.BigEndian.Uint64(v)
		}
		c.Close()
	case !errors.Is(err, pebble.ErrNotFound):
		return err
	}
	next = max(next, s.seqFloor)
	curs, err := s.Cursors()
	if err != nil {
		return err
	}
	for _, c := range curs {
		next = max(next, c)
	}
	s.nextSeq = next
	if first == 0 {
		first = next
	}
	s.outboxLow = first
	return nil
}

// Outbox values carry the event's type and message id in front of its
// JSON, so readers route events without decoding JSON:
//
//	0x01 uvarint(len(type)) type uvarint(len(message_id)) message_id json
//
// Values written before this format are the bare JSON object ('{').
const outboxV1 = 0x01

func outboxValueLen(ev *pipeline.Event, js []byte) int {
	return 1 + uvarintLen(len(ev.Type)) + len(ev.Type) + uvarintLen(len(ev.MessageID)) + len(ev.MessageID) + len(js)
}

func uvarintLen(n int) int {
	var b [binary.MaxVarintLen64]byte
	return binary.PutUvarint(b[:], uint64(n))
}

// putOutboxValue encodes an outbox value into dst, which has exactly
// outboxValueLen bytes.
func putOutboxValue(dst []byte, ev *pipeline.Event, js []byte) {
	dst[0] = outboxV1
	n := 1
	n += binary.PutUvarint(dst[n:], uint64(len(ev.Type)))
	n += copy(dst[n:], ev.Type)
	n += binary.PutUvarint(dst[n:], uint64(len(ev.MessageID)))
	n += copy(dst[n:], ev.MessageID)
	copy(dst[n:], js)
}

// setOutboxEvent adds the outbox record of event seq to b, encoded in
// place in the batch (no intermediate copy).
func setOutboxEvent(b *pebble.Batch, seq uint64, ev *pipeline.Event, js []byte) {
	op := b.SetDeferred(1+8, outboxValueLen(ev, js))
	op.Key[0] = kEvent
	binary.BigEndian.PutUint64(op.Key[1:], seq)
	putOutboxValue(op.Value, ev, js)
	_ = op.Finish()
}

// splitOutboxValue returns the type, message id and JSON of a stored
// outbox value (the slices alias v).
func splitOutboxValue(v []byte) (typ, msgID, js []byte, err error) {
	if len(v) > 0 && v[0] == '{' { // written by an older version
		var h struct {
			Type      string `json:"type"`
			MessageID string `json:"message_id"`
		}
		if err := json.Unmarshal(v, &h); err != nil {
			return nil, nil, nil, err
		}
		return []byte(h.Type), []byte(h.MessageID), v, nil
	}
	if len(v) == 0 || v[0] != outboxV1 {
		return nil, nil, nil, errors.New("unknown outbox value format")
	}
	rest := v[1:]
	field := func() ([]byte, bool) {
		n, k := binary.Uvarint(rest)
		if k <= 0 || uint64(len(rest)-k) < n {
			return nil, false
		}
		f := rest[k : k+int(n)]
		rest = rest[k+int(n):]
		return f, true
	}
	typ, ok1 := field()
	msgID, ok2 := field()
	if !ok1 || !ok2 {
		return nil, nil, nil, errors.New("truncated outbox value")
	}
	return typ, msgID, rest, nil
}

// eventTypes interns the known event types, so reading one allocates
// nothing.
var eventTypes = map[string]string{}

func init() {
	for _, t := range []string{pipeline.EventReceived, pipeline.EventRejected, pipeline.EventDeferred,
		pipeline.EventDelivered, pipeline.EventBounced, pipeline.EventExpired, pipeline.EventDiscarded,
		pipeline.EventSuppressed, pipeline.EventCancelled} {
		eventTypes[t] = t
	}
}

func internType(b []byte) string {
	if t, ok := eventTypes[string(b)]; ok {
		return t
	}
	return string(b)
}
