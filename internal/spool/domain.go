package spool

// Sending domains registered through the HTTP API (internal/domains): the
// domain, its tenant and its DKIM keys, so that a restarted node signs
// with the same keys and knows what was verified.
//
// Key layout:
//
//	d<domain>   one domain (JSON Domain), lower-case, no trailing dot
//
// A domain belongs to one tenant: the one that registered it. The table
// is small (one entry per sending domain), so listings scan it whole.
// Read-modify-write sequences are the caller's to serialise
// (domains.Registry holds one lock).

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/sluice-mta/sluice/pipeline"
)

const kDomain = 'd'

// DKIM key states of a registered domain (docs/rotation.md): a rotation
// publishes a new key as pending, makes it active once resolvers see it
// (the old active key becomes retired: published, no longer signing),
// revokes the retired key after the overlap (an empty p= is published),
// and finally drops the revoked key from Keys.
const (
	KeyPending = "pending" // published, not yet signing
	KeyActive  = "active"  // signing
	KeyRetired = "retired" // published, no longer signing (mail in flight still verifies)
	KeyRevoked = "revoked" // no longer signing; published with an empty p=
)

// Domain is one registered sending domain.
type Domain struct {
	Domain  string      `json:"domain"`
	Tenant  string      `json:"tenant"`
	Keys    []DomainKey `json:"keys"`
	Created time.Time   `json:"created"`
	// Verified is when every record was last seen published as needed;
	// zero while not (yet) verified.
	Verified time.Time `json:"verified,omitzero"`
	// Unverified is when a verified domain lost that status (a record
	// that signing or sending needs went missing or wrong), zero
	// otherwise; UnverifiedWhy says which records. Both are cleared when
	// it is verified again.
	Unverified    time.Time `json:"unverified,omitzero"`
	UnverifiedWhy string    `json:"unverified_why,omitempty"`
	// RotateRequested is set by a manual rotation request (POST
	// /v1/domains/{d}/rotate) that the rotation job has not started yet.
	RotateRequested time.Time `json:"rotate_requested,omitzero"`
}

// DomainKey is one DKIM key of a registered domain. PrivateKey is the
// PKCS #8 PEM: the spool directory is the node's secret store (it holds
// mail too), mode 0700.
type DomainKey struct {
	Selector   string    `json:"selector"`
	Algo       string    `json:"algo"` // rsa, ed25519
	State      string    `json:"state"`
	PrivateKey string    `json:"private_key"`
	Created    time.Time `json:"created"`
	// Since is when the key entered State (zero on keys stored before
	// rotation existed: Created stands in).
	Since time.Time `json:"since,omitzero"`
}

// StateSince is when k entered its state: Since, else Created.
func (k *DomainKey) StateSince() time.Time {
	if k.Since.IsZero() {
		return k.Created
	}
	return k.Since
}

func domainKey(name string) []byte { return append([]byte{kDomain}, name...) }

// PutDomain stores d (replacing the entry of the same name) and records
// ev, when not nil, in one synced batch.
func (s *Spool) PutDomain(d *Domain, ev *pipeline.Event) error {
	v, err := json.Marshal(d)
	if err != nil {
		return err
	}
	b := s.NewBatch()
	_ = b.b.Set(domainKey(d.Domain), v, nil)
	if ev != nil {
		b.AddEvent(ev)
	}
	return b.Commit(true)
}

// GetDomain returns the domain called name, or nil when none is.
func (s *Spool) GetDomain(name string) (*Domain, error) {
	v, c, err := s.db.Get(domainKey(name))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var d Domain
	if err := json.Unmarshal(v, &d); err != nil {
		return nil, fmt.Errorf("domain %q: %w", name, err)
	}
	return &d, nil
}

// ListDomains returns every registered domain, in name order.
func (s *Spool) ListDomains() ([]Domain, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{kDomain}, UpperBound: []byte{kDomain + 1}})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	out := []Domain{}
	for ok := it.First(); ok; ok = it.Next() {
		var d Domain
		if err := json.Unmarshal(it.Value(), &d); err != nil {
			return nil, fmt.Errorf("domain %q: %w", it.Key()[1:], err)
		}
		out = append(out, d)
	}
	return out, it.Error()
}

// DeleteDomain removes the domain called name and records ev, when not
// nil, in one synced batch. Removing a domain that is not there writes
// the event only.
func (s *Spool) DeleteDomain(name string, ev *pipeline.Event) error {
	b := s.NewBatch()
	_ = b.b.Delete(domainKey(name), nil)
	if ev != nil {
		b.AddEvent(ev)
	}
	return b.Commit(true)
}
