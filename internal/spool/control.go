package spool

// Queue control state kept in the spool (internal/queue control.go): the
// paused queues, so that a pause survives a restart. Held recipients are
// marked in their own records (Recipient.Held).

import (
	"bytes"

	"github.com/cockroachdb/pebble/v2"
)

// kPaused keys a paused queue: p<queue name> → empty value.
const kPaused = 'p'

func pausedKey(name string) []byte { return append([]byte{kPaused}, name...) }

// SetPaused records that the queue name is paused (or no longer is), in
// b: commit it with the event of the pause.
func (b *Batch) SetPaused(name string, paused bool) {
	if paused {
		_ = b.b.Set(pausedKey(name), nil, nil)
	} else {
		_ = b.b.Delete(pausedKey(name), nil)
	}
}

// PausedQueues returns the names of the queues recorded paused, sorted.
// Safe for concurrent use.
func (s *Spool) PausedQueues() ([]string, error) {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{kPaused}, UpperBound: []byte{kPaused + 1}})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []string
	for it.First(); it.Valid(); it.Next() {
		out = append(out, string(bytes.TrimPrefix(it.Key(), []byte{kPaused})))
	}
	return out, it.Error()
}

// NoSuppression keeps the bounced events of b off the suppression list:
// an operator's bounce says nothing about the address.
func (b *Batch) NoSuppression() { b.noSuppress = true }
