package spool

// Token revocations (internal/revoke): the node's copy of every
// revocation it made or learned from another node, so that a restarted
// node honours them before its listeners accept (and without Redis).
//
// Key layout:
//
//	vj<tenant>\x00<jti>   a token id revoked for a tenant (JSON Revocation)
//	vt<tenant>            a tenant's "not before" time (JSON Revocation)
//
// Id entries are dropped by PruneRevocations once no token they name can
// still be valid (Revocation.Expires); tenant entries are kept.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/sluice-mta/sluice/pipeline"
)

const kRevocation = 'v'

// Revocation kinds.
const (
	RevokeID     = "id"     // one token, by jti
	RevokeTenant = "tenant" // every token of a tenant issued before Before
)

// Revocation is one revoked token id or one tenant's "not before" time.
type Revocation struct {
	Kind   string `json:"kind"` // RevokeID or RevokeTenant
	Tenant string `json:"tenant"`
	// ID is the revoked token's jti (RevokeID).
	ID string `json:"id,omitempty"`
	// Before: tokens of Tenant issued (iat) earlier are refused
	// (RevokeTenant).
	Before time.Time `json:"before,omitzero"`
	// Expires is when a RevokeID entry may be forgotten: no token it
	// names can be valid after it (revocation time + the longest token
	// lifetime + clock skew).
	Expires time.Time `json:"expires,omitzero"`
	Source  string    `json:"source,omitempty"` // api, cli
	Created time.Time `json:"created"`
}

func revocationKey(r *Revocation) ([]byte, error) {
	if strings.IndexByte(r.Tenant, 0) >= 0 || strings.IndexByte(r.ID, 0) >= 0 {
		return nil, ErrBadTenant
	}
	switch r.Kind {
	case RevokeID:
		k := append([]byte{kRevocation, 'j'}, r.Tenant...)
		k = append(k, 0)
		return append(k, r.ID...), nil
	case RevokeTenant:
		return append([]byte{kRevocation, 't'}, r.Tenant...), nil
	}
	return nil, fmt.Errorf("spool: unknown revocation kind %q", r.Kind)
}

// PutRevocations stores rs (replacing entries with the same key) and
// records ev, when not nil, in one synced batch. Safe for concurrent use;
// the caller (internal/revoke) decides what replaces what.
func (s *Spool) PutRevocations(rs []Revocation, ev *pipeline.Event) error {
	b := s.NewBatch()
	for i := range rs {
		k, err := revocationKey(&rs[i])
		if err != nil {
			b.Discard()
			return err
		}
		v, err := json.Marshal(&rs[i])
		if err != nil {
			b.Discard()
			return err
		}
		_ = b.b.Set(k, v, nil)
	}
	if ev != nil {
		b.AddEvent(ev)
	}
	return b.Commit(true)
}

// Revocations returns every stored revocation, id entries first.
func (s *Spool) Revocations() ([]Revocation, error) {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{kRevocation}, UpperBound: []byte{kRevocation + 1}})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []Revocation
	for ok := it.First(); ok; ok = it.Next() {
		var r Revocation
		if err := json.Unmarshal(it.Value(), &r); err != nil {
			return nil, fmt.Errorf("revocation %q: %w", it.Key(), err)
		}
		out = append(out, r)
	}
	return out, it.Error()
}

// PruneRevocations deletes the id entries that expired before now and
// returns how many.
func (s *Spool) PruneRevocations(now time.Time) (int, error) {
	return s.pruneRange([]byte{kRevocation, 'j'}, []byte{kRevocation, 'j' + 1}, func(v []byte) bool {
		var r Revocation
		return json.Unmarshal(v, &r) != nil || !now.Before(r.Expires)
	})
}

// pruneRange deletes the records in [lo, hi) whose value expired says
// is expired (or unreadable), in one unsynced batch, and returns how
// many.
func (s *Spool) pruneRange(lo, hi []byte, expired func(v []byte) bool) (int, error) {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return 0, err
	}
	defer it.Close()
	b := s.db.NewBatch()
	n := 0
	for ok := it.First(); ok; ok = it.Next() {
		if expired(it.Value()) {
			_ = b.Delete(bytes.Clone(it.Key()), nil)
			n++
		}
	}
	if err := it.Error(); err != nil {
		b.Close()
		return 0, err
	}
	if n == 0 {
		b.Close()
		return 0, nil
	}
	return n, s.apply(b, pebble.NoSync) // apply owns b
}
