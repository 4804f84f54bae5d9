package spool

// The per-tenant suppression list: addresses a tenant's mail is no longer
// sent to, because they bounced hard or because someone put them there
// (HTTP API, CLI). The relay refuses a suppressed recipient at RCPT;
// the delivery queue feeds the list through the bounce hook of
// Batch.Commit (suppressBounces), so a hard bounce and its suppression
// commit in the same atomic batch as the recipient's final state.
//
// Key layout:
//
//	s<tenant>\x00<address>   one entry (JSON Suppression)
//
// Tenants never contain NUL (pipeline.ValidTenant; "" is the tenant of
// clients without one), so one tenant's entries are one contiguous key
// range, ordered by address: the listing pages through it with a cursor
// that is the last address returned.
//
// Address case: the domain is compared in lower case (DNS names are case
// insensitive); the local part is kept exactly as given, because RFC 5321
// section 2.4 lets only the destination host interpret its case
// ("John" and "john" may be two mailboxes). A bounce of John@example.org
// therefore does not suppress john@example.org. Quoting is canonical
// (pipeline.JoinAddress): "john"@example.org and john@example.org are one
// address.

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/sluice-mta/sluice/pipeline"
)

const kSuppression = 's'

// Suppression sources.
const (
	SuppressionBounce = "bounce" // a hard bounce of a suppressing class
	SuppressionAPI    = "api"    // POST /v1/suppressions
	SuppressionCLI    = "cli"    // sluice suppression add (through the API)
	// SuppressionUnsubscribe: the recipient unsubscribed through a
	// tracking link (RFC 8058 one-click or the confirmation page).
	SuppressionUnsubscribe = "unsubscribe"
	// SuppressionComplaint: the recipient complained (a sandbox's
	// simulated complaint, docs/sandbox.md).
	SuppressionComplaint = "complaint"
)

// MaxSuppressionLimit bounds one page of ListSuppressions;
// DefaultSuppressionLimit is the page size when none is asked for.
const (
	MaxSuppressionLimit     = 1000
	DefaultSuppressionLimit = 100
)

// Suppression is one entry of a tenant's suppression list.
type Suppression struct {
	Tenant  string `json:"tenant"`
	Address string `json:"address"` // canonical (CanonicalAddress)
	// Reason is free text: the bounce's reply ("550 5.1.1 ...") or what
	// the API client gave.
	Reason string `json:"reason"`
	// Class is the bounce class that caused the entry (InvalidRecipient,
	// InactiveMailbox, BadDomain, ...); "" for entries added by hand.
	Class  string `json:"class,omitempty"`
	Source string `json:"source"` // SuppressionBounce, SuppressionAPI, SuppressionCLI
	// EventID and MessageID name the "bounced" event and the message
	// that caused the entry (bounces only).
	EventID   string    `json:"event_id,omitempty"`
	MessageID string    `json:"message_id,omitempty"`
	Created   time.Time `json:"created"`
}

// SuppressionPolicy is what feeds and enforces the list; see
// SetSuppressionPolicy.
type SuppressionPolicy struct {
	// Enabled: hard bounces add entries and Suppressed reports entries.
	// When false the list is kept (and the API still manages it) but it
	// is neither fed nor enforced.
	Enabled bool
	// Classes are the bounce classes that add the recipient.
	Classes []string
}

// suppState is the spool's suppression policy (Spool.supp).
type suppState struct {
	policy atomic.Pointer[suppPolicy]
	mu     sync.Mutex // serialises read-modify-write of entries
	filter suppFilter
}

// suppFilter holds a 64-bit hash of every entry's key, so that the
// common case at RCPT, an address not on the list, costs a map lookup
// instead of a Pebble read (measured: BenchmarkSuppressed, a miss in a
// list of 100,000 entries about 16 µs through Pebble). It only answers
// "maybe listed": a hash present sends the lookup to Pebble, which
// decides. Hashes are added before the batch that writes their entry
// commits and are never removed (a removed entry costs a Pebble read
// until the next start), so it has no false negatives whatever the
// interleaving of adds, removals and the initial load. Memory: about 40
// bytes per entry.
type suppFilter struct {
	mu     sync.RWMutex
	set    map[uint64]struct{}
	loaded atomic.Bool // the load scan finished: the set is complete
	once   sync.Once
}

var suppSeed = maphash.MakeSeed()

func (f *suppFilter) add(key []byte) {
	h := maphash.Bytes(suppSeed, key)
	f.mu.Lock()
	if f.set == nil {
		f.set = map[uint64]struct{}{}
	}
	f.set[h] = struct{}{}
	f.mu.Unlock()
}

// may reports whether key may be on the list (always, until loaded).
func (f *suppFilter) may(key []byte) bool {
	if !f.loaded.Load() {
		return true
	}
	h := maphash.Bytes(suppSeed, key)
	f.mu.RLock()
	_, ok := f.set[h]
	f.mu.RUnlock()
	return ok
}

// load adds every stored entry's key (once per spool). On a read error
// the filter stays unloaded: every lookup goes to Pebble.
func (s *Spool) loadSuppFilter() {
	f := &s.supp.filter
	f.once.Do(func() {
		start := time.Now()
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{kSuppression}, UpperBound: []byte{kSuppression + 1}})
		if err != nil {
			s.log.Warn("cannot load the suppression list filter; every lookup reads the spool", "err", err)
			return
		}
		defer it.Close()
		n := 0
		for ok := it.First(); ok; ok = it.Next() {
			f.add(it.Key())
			n++
		}
		if err := it.Error(); err != nil {
			s.log.Warn("cannot load the suppression list filter; every lookup reads the spool", "err", err)
			return
		}
		f.loaded.Store(true)
		s.log.Debug("suppression list filter loaded", "entries", n, "took", time.Since(start))
	})
}

type suppPolicy struct {
	enabled bool
	classes map[string]bool
}

// SetSuppressionPolicy sets (or, on a configuration reload, replaces)
// the suppression policy. Until it is called the list is disabled. The
// first call reads every entry's key into the in-memory filter (a scan
// of the list; call it at start, before serving). Safe for concurrent
// use.
func (s *Spool) SetSuppressionPolicy(p SuppressionPolicy) {
	s.loadSuppFilter()
	sp := &suppPolicy{enabled: p.Enabled, classes: map[string]bool{}}
	for _, c := range p.Classes {
		sp.classes[c] = true
	}
	s.supp.policy.Store(sp)
}

func (s *Spool) suppPolicy() *suppPolicy {
	if p := s.supp.policy.Load(); p != nil && p.enabled {
		return p
	}
	return nil
}

// CanonicalAddress returns addr as the suppression list keys it: quoting
// canonical, the domain in lower case, the local part as given. It
// returns ParseAddress's error for what is not an address.
func CanonicalAddress(addr string) (string, error) {
	_, local, domain, err := pipeline.ParseAddress(addr)
	if err != nil {
		return "", err
	}
	// RFC 5321 section 4.5.3.1: a local part of at most 64 octets, a
	// domain of at most 255. No such address can be delivered, so none is
	// listed.
	if len(local) > 64 || len(domain) > 255 {
		return "", fmt.Errorf("the address is longer than RFC 5321 allows (local part at most 64 octets, domain at most 255)")
	}
	return pipeline.JoinAddress(local, domain), nil
}

func suppKey(tenant, addr string) []byte {
	k := make([]byte, 0, 2+len(tenant)+len(addr))
	k = append(k, kSuppression)
	k = append(k, tenant...)
	k = append(k, 0)
	return append(k, addr...)
}

func suppPrefix(tenant string) []byte {
	return append(append([]byte{kSuppression}, tenant...), 0)
}

// ErrBadTenant is returned for a tenant name with a NUL byte.
var ErrBadTenant = errors.New("spool: a tenant name cannot contain NUL")

// Suppressed returns tenant's entry for addr (canonical, see
// CanonicalAddress) when the list is enabled and holds it; nil
// otherwise. The relay calls it for every recipient: an address not on
// the list is answered from the in-memory filter (suppFilter), one that
// may be by a Pebble point read. Safe for concurrent use.
func (s *Spool) Suppressed(tenant, addr string) (*Suppression, error) {
	if s.suppPolicy() == nil {
		return nil, nil
	}
	if strings.IndexByte(tenant, 0) >= 0 {
		return nil, ErrBadTenant
	}
	if !s.supp.filter.may(suppKey(tenant, addr)) {
		return nil, nil
	}
	return s.GetSuppression(tenant, addr)
}

// GetSuppression returns tenant's entry for addr (canonical), or nil
// when there is none, whether or not the list is enabled.
func (s *Spool) GetSuppression(tenant, addr string) (*Suppression, error) {
	if strings.IndexByte(tenant, 0) >= 0 {
		return nil, ErrBadTenant
	}
	v, c, err := s.db.Get(suppKey(tenant, addr))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var e Suppression
	if err := json.Unmarshal(v, &e); err != nil {
		return nil, fmt.Errorf("suppression entry %q of tenant %q: %w", addr, tenant, err)
	}
	return &e, nil
}

// SuppressionPage is one page of a tenant's list, in address order.
// Next is the cursor of the next page ("" when this is the last).
type SuppressionPage struct {
	Entries []Suppression
	Next    string
}

// ListSuppressions returns up to limit entries of tenant after cursor
// ("" for the first page; otherwise a Next of an earlier page).
// limit <= 0 means DefaultSuppressionLimit; more than
// MaxSuppressionLimit is MaxSuppressionLimit. A cursor that is not one
// of ours is ErrBadCursor.
func (s *Spool) ListSuppressions(tenant, cursor string, limit int) (*SuppressionPage, error) {
	if strings.IndexByte(tenant, 0) >= 0 {
		return nil, ErrBadTenant
	}
	if limit <= 0 {
		limit = DefaultSuppressionLimit
	}
	if limit > MaxSuppressionLimit {
		limit = MaxSuppressionLimit
	}
	prefix := suppPrefix(tenant)
	lo := prefix
	if cursor != "" {
		after, err := base64.RawURLEncoding.DecodeString(cursor)
		if err != nil || len(after) == 0 {
			return nil, ErrBadCursor
		}
		lo = append(append(bytes.Clone(prefix), after...), 0) // the first key after it
	}
	hi := append(bytes.Clone(prefix[:len(prefix)-1]), 1)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	p := &SuppressionPage{Entries: []Suppression{}}
	for ok := it.First(); ok; ok = it.Next() {
		if len(p.Entries) == limit {
			last := p.Entries[len(p.Entries)-1].Address
			p.Next = base64.RawURLEncoding.EncodeToString([]byte(last))
			break
		}
		var e Suppression
		if err := json.Unmarshal(it.Value(), &e); err != nil {
			return nil, fmt.Errorf("suppression entry %q: %w", it.Key(), err)
		}
		p.Entries = append(p.Entries, e)
	}
	if err := it.Error(); err != nil {
		return nil, err
	}
	return p, nil
}

// AddSuppression stores e (its Address made canonical, Created filled
// when zero), replacing an entry of the same tenant and address, and
// records a "suppression_added" event for it, in one synced batch. It
// returns the entry it replaced, if any; an Address that is not an
// address is CanonicalAddress's error. The events in also (an
// unsubscribed event) are written in the same batch. Safe for concurrent
// use.
func (s *Spool) AddSuppression(e *Suppression, also ...*pipeline.Event) (prev *Suppression, err error) {
	return s.addSuppression(e, false, also)
}

// AddSuppressionIfAbsent is AddSuppression when tenant has no entry for
// e.Address, and does nothing (no write, no event) when it has one,
// which it returns: the check and the write are one step, so of
// concurrent calls for one address (a provider retrying a one-click
// unsubscribe) exactly one adds the entry and records its events. Safe
// for concurrent use.
func (s *Spool) AddSuppressionIfAbsent(e *Suppression, also ...*pipeline.Event) (prev *Suppression, err error) {
	return s.addSuppression(e, true, also)
}

func (s *Spool) addSuppression(e *Suppression, ifAbsent bool, also []*pipeline.Event) (prev *Suppression, err error) {
	if strings.IndexByte(e.Tenant, 0) >= 0 {
		return nil, ErrBadTenant
	}
	if e.Address, err = CanonicalAddress(e.Address); err != nil {
		return nil, err
	}
	if e.Created.IsZero() {
		e.Created = time.Now().UTC()
	}
	v, err := json.Marshal(e)
	if err != nil {
		return nil, err
	}
	s.supp.mu.Lock()
	defer s.supp.mu.Unlock()
	if prev, err = s.GetSuppression(e.Tenant, e.Address); err != nil {
		return nil, err
	}
	if ifAbsent && prev != nil {
		return prev, nil
	}
	k := suppKey(e.Tenant, e.Address)
	s.supp.filter.add(k) // before the commit: never a false negative
	b := s.NewBatch()
	_ = b.b.Set(k, v, nil)
	b.AddEvent(SuppressionEvent(pipeline.EventSuppressionAdded, e))
	for _, ev := range also {
		b.AddEvent(ev)
	}
	return prev, b.Commit(true)
}

// RemoveSuppression deletes tenant's entry for addr (canonical) and
// records a "suppression_removed" event, in one synced batch. source
// (SuppressionAPI, SuppressionCLI) is who removed it. It returns the
// removed entry, or nil (and writes nothing) when there was none.
func (s *Spool) RemoveSuppression(tenant, addr, source string) (*Suppression, error) {
	s.supp.mu.Lock()
	defer s.supp.mu.Unlock()
	e, err := s.GetSuppression(tenant, addr)
	if err != nil || e == nil {
		return nil, err
	}
	b := s.NewBatch()
	_ = b.b.Delete(suppKey(tenant, addr), nil)
	ev := SuppressionEvent(pipeline.EventSuppressionRemoved, e)
	ev.Source = source
	b.AddEvent(ev)
	return e, b.Commit(true)
}

// SuppressionEvent is the event of type typ (pipeline.EventSuppressionAdded
// or EventSuppressionRemoved) about e: recipient = the address, source =
// e.Source, bounce_class = e.Class, message_id = e.MessageID (bounces),
// metadata {"reason": e.Reason} and, for a bounce, "event_id": the
// bounced event.
func SuppressionEvent(typ string, e *Suppression) *pipeline.Event {
	md := map[string]string{"reason": e.Reason}
	if e.EventID != "" {
		md["event_id"] = e.EventID
	}
	return &pipeline.Event{Type: typ, MessageID: e.MessageID, Recipient: e.Address, Source: e.Source,
		Tenant: e.Tenant, BounceClass: e.Class, Metadata: md}
}

// suppressBounces is the bounce hook of Batch.Commit: for each "bounced"
// event in b whose bounce_class suppresses, it adds the
// recipient to the tenant's list, with a "suppression_added" event, to
// b itself, so that the entry commits atomically with the outcome. An
// address already on the list keeps its first entry (no new event).
// Read errors are logged and skip the entry: delivery outcomes are never
// held back by the list.
func (b *Batch) suppressBounces() {
	p := b.s.suppPolicy()
	if p == nil || b.noSuppress {
		return
	}
	var seen map[string]bool
	n := len(b.events)
	for i := 0; i < n; i++ {
		ev := b.events[i]
		if ev.Type != pipeline.EventBounced {
			continue
		}
		class := ev.BounceClass // set by the queue's classifier (internal/bounce)
		if !p.classes[class] {
			continue
		}
		addr, err := CanonicalAddress(ev.Recipient)
		if err != nil || strings.IndexByte(ev.Tenant, 0) >= 0 {
			continue
		}
		k := suppKey(ev.Tenant, addr)
		if seen[string(k)] {
			continue
		}
		if seen == nil {
			seen = map[string]bool{}
		}
		seen[string(k)] = true
		have, err := b.s.GetSuppression(ev.Tenant, addr)
		if err != nil {
			b.s.log.Warn("cannot read the suppression list; bounced address not added", "tenant", ev.Tenant, "rcpt", addr, "err", err)
			continue
		}
		if have != nil {
			continue
		}
		if ev.EventID == "" {
			ev.EventID = b.s.NewID()
		}
		e := &Suppression{Tenant: ev.Tenant, Address: addr, Class: class, Source: SuppressionBounce,
			EventID: ev.EventID, MessageID: ev.MessageID, Created: time.Now().UTC()}
		if r := ev.Response; r != nil {
			e.Reason = strings.TrimSpace(fmt.Sprintf("%d %s %s", r.Code, r.Enhanced, r.Text))
		}
		v, err := json.Marshal(e)
		if err != nil {
			continue
		}
		b.s.supp.filter.add(k) // before the commit: never a false negative
		_ = b.b.Set(k, v, nil)
		sev := SuppressionEvent(pipeline.EventSuppressionAdded, e)
		sev.Sender, sev.Response = ev.Sender, ev.Response
		b.events = append(b.events, sev)
		b.s.log.Info("address suppressed after a hard bounce", "tenant", ev.Tenant, "rcpt", addr, "class", class, "msgid", ev.MessageID)
	}
}

func init() {
	// Intern the suppression event types like the others (cursor.go).
	for _, t := range []string{pipeline.EventSuppressionAdded, pipeline.EventSuppressionRemoved} {
		eventTypes[t] = t
	}
}
