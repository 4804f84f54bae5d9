package spool

// State queries: one message's status (Status) and a listing of the
// messages still in the spool (List). Both read one Pebble snapshot, so
// they never see half of an outcome batch.

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/oklog/ulid/v2"

	"github.com/sluice-mta/sluice/pipeline"
)

// Recipient states, as reported by Status and List. A recipient still in
// the spool is StateQueued until its first attempt and StateDeferred
// after; the other states are final and come from its last event.
const (
	StateQueued     = "queued"
	StateDeferred   = "deferred"
	StateHeld       = "held"
	StateDelivered  = "delivered"
	StateBounced    = "bounced"
	StateExpired    = "expired"
	StateRejected   = "rejected"
	StateDiscarded  = "discarded"
	StateSuppressed = "suppressed"
	StateCancelled  = "cancelled"
)

// stateOfEvent maps an event type to the recipient state it leaves.
var stateOfEvent = map[string]string{
	pipeline.EventReceived:   StateQueued,
	pipeline.EventDeferred:   StateDeferred,
	pipeline.EventDelivered:  StateDelivered,
	pipeline.EventBounced:    StateBounced,
	pipeline.EventExpired:    StateExpired,
	pipeline.EventRejected:   StateRejected,
	pipeline.EventDiscarded:  StateDiscarded,
	pipeline.EventSuppressed: StateSuppressed,
	pipeline.EventCancelled:  StateCancelled,
}

// ErrNotFound is returned by Status for a message the spool knows nothing
// about: no metadata, no recipient and no history (never accepted, or
// its history was pruned).
var ErrNotFound = errors.New("spool: message not found")

// ErrBadCursor is returned by List for a cursor it did not issue.
var ErrBadCursor = errors.New("spool: invalid cursor")

// RecipientStatus is one recipient's current state.
type RecipientStatus struct {
	Address string
	State   string // one of the State* constants (an unknown event type is passed through)
	Queue   string // delivery queue, "" if the recipient never reached one
	// Attempts is the number of delivery attempts made so far.
	Attempts int
	// NextAttempt is when the next attempt is due; zero unless the
	// recipient is still in the spool (queued or deferred).
	NextAttempt time.Time
	// LastResponse is the reply of the last attempt, or of the refusal;
	// nil while no attempt was made.
	LastResponse *pipeline.Response
	// Updated is the time of the recipient's last state change (its last
	// event; the message's receipt if it has none).
	Updated time.Time
}

// MessageStatus is a message's metadata, the current state of each of its
// recipients and its event timeline.
type MessageStatus struct {
	ID       string
	Sender   string
	Tenant   string
	Source   string
	Identity string
	Tags     []string
	Metadata map[string]string
	Received time.Time
	Size     int
	// InSpool reports whether the message is still stored (some recipient
	// is not final yet). Once it is not, the metadata above comes from
	// its events.
	InSpool    bool
	Recipients []RecipientStatus
	Events     []pipeline.Event // oldest first
}

// Status returns what the spool knows about message msgID: the live
// recipient records (queued and deferred recipients, with attempts, next
// attempt and last reply) merged with the event history (final states,
// which outlive the message until PruneHistory). A live record wins over
// the history for its recipient. Recipients are listed in the order of
// their first event. It returns ErrNotFound if nothing is known. Safe for
// concurrent use.
func (s *Spool) Status(msgID string) (*MessageStatus, error) {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	snap, done := s.snapshot()
	defer done()

	meta, err := metaOf(snap, msgID)
	if err != nil && !errors.Is(err, pebble.ErrNotFound) {
		return nil, err
	}
	evs, err := historyOf(snap, msgID)
	if err != nil {
		return nil, err
	}
	live, err := recipientsOf(snap, msgID)
	if err != nil {
		return nil, err
	}
	if meta == nil && len(evs) == 0 && len(live) == 0 {
		return nil, ErrNotFound
	}

	st := &MessageStatus{ID: msgID, Events: evs}
	switch {
	case meta != nil:
		st.InSpool = true
		st.Sender, st.Tenant, st.Source, st.Identity = meta.Sender, meta.Tenant, meta.Source, meta.Identity
		st.Tags, st.Metadata, st.Received, st.Size = meta.Tags, meta.Meta, meta.Received, meta.Size
	case len(evs) > 0:
		ev := &evs[0]
		st.Sender, st.Tenant, st.Source = ev.Sender, ev.Tenant, ev.Source
		st.Tags, st.Metadata, st.Size = ev.Tags, ev.Metadata, ev.Size
		st.Received = ev.Time
	}
	if st.Received.IsZero() {
		if id, err := ulid.ParseStrict(msgID); err == nil {
			st.Received = ulid.Time(id.Time()).UTC()
		}
	}

	pos := map[string]int{}
	for i := range evs {
		ev := &evs[i]
		if ev.Recipient == "" || ev.Type == pipeline.EventSuppressionAdded || ev.Type == pipeline.EventSuppressionRemoved {
			continue // a suppression list change is in the timeline, not a recipient state
		}
		j, ok := pos[ev.Recipient]
		if !ok {
			j = len(st.Recipients)
			pos[ev.Recipient] = j
			st.Recipients = append(st.Recipients, RecipientStatus{Address: ev.Recipient})
		}
		rs := &st.Recipients[j]
		if state, ok := stateOfEvent[ev.Type]; ok {
			rs.State = state
		} else {
			rs.State = ev.Type
		}
		if ev.Queue != "" {
			rs.Queue = ev.Queue
		}
		if ev.Attempt > rs.Attempts {
			rs.Attempts = ev.Attempt
		}
		rs.Updated, rs.LastResponse = ev.Time, ev.Response
	}
	for _, r := range live {
		j, ok := pos[r.Address]
		if !ok {
			j = len(st.Recipients)
			pos[r.Address] = j
			st.Recipients = append(st.Recipients, RecipientStatus{Address: r.Address, Updated: st.Received})
		}
		rs := &st.Recipients[j]
		rs.State, rs.Queue = liveState(r), queueOf(r)
		rs.Attempts, rs.NextAttempt, rs.LastResponse = r.Attempts, r.NextAttempt, r.LastReply
	}
	return st, nil
}

func liveState(r *Recipient) string {
	if r.Held {
		return StateHeld
	}
	if r.Attempts > 0 {
		return StateDeferred
	}
	return StateQueued
}

func queueOf(r *Recipient) string {
	route := r.Route
	if route == nil {
		route = pipeline.MX()
	}
	return route.QueueName(r.Domain)
}

// snapshot returns a consistent view for a query and its release. After
// a Pebble fatal error it is the database itself: nothing writes any
// more, and NewSnapshot needs a mutex the parked goroutine may hold.
// Call with dbMu held (read).
func (s *Spool) snapshot() (pebble.Reader, func()) {
	if s.plog.msg.Load() != nil {
		return s.db, func() {}
	}
	snap := s.db.NewSnapshot()
	return snap, func() { snap.Close() }
}

func metaOf(rd pebble.Reader, msgID string) (*Meta, error) {
	v, c, err := rd.Get(metaKey(msgID))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var m Meta
	if err := json.Unmarshal(v, &m); err != nil {
		return nil, fmt.Errorf("message %s: corrupt metadata: %w", msgID, err)
	}
	return &m, nil
}

// historyOf reads a message's events, oldest first.
func historyOf(rd pebble.Reader, msgID string) ([]pipeline.Event, error) {
	lo := append([]byte{kHistory}, msgID...)
	hi := append(bytes.Clone(lo), 0xff)
	it, err := rd.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []pipeline.Event
	for it.First(); it.Valid(); it.Next() {
		if len(it.Key()) != len(lo)+ulid.EncodedSize {
			continue
		}
		var ev pipeline.Event
		if err := json.Unmarshal(it.Value(), &ev); err == nil {
			out = append(out, ev)
		}
	}
	return out, it.Error()
}

// recipientsOf reads a message's live recipient records in index order.
func recipientsOf(rd pebble.Reader, msgID string) ([]*Recipient, error) {
	lo := append([]byte{kRcpt}, msgID...)
	it, err := rd.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: afterMessage(msgID)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []*Recipient
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) != len(lo)+2 {
			continue
		}
		r := &Recipient{}
		if err := json.Unmarshal(it.Value(), r); err != nil {
			return nil, fmt.Errorf("message %s: corrupt recipient record: %w", msgID, err)
		}
		r.MsgID, r.Idx = msgID, int(binary.BigEndian.Uint16(k[len(k)-2:]))
		out = append(out, r)
	}
	return out, it.Error()
}

// afterMessage is the smallest recipient key above every recipient key of
// msgID (ids have a fixed length, so no other message's keys fall
// between).
func afterMessage(msgID string) []byte {
	return append(rcptKey(msgID, 0xffff), 0)
}

// ---- listing ----

// Listing limits.
const (
	DefaultListLimit = 100
	MaxListLimit     = 1000
	// idClockSlack is how far a message's received time may be from the
	// time in its id (both are read from one clock when a transaction
	// starts). Received-time filters use the ids to skip ranges with this
	// much margin, then compare the received time exactly.
	idClockSlack = time.Minute
)

// listScanBudget bounds the messages one List call examines, so that a
// filter matching little never scans the whole spool in one call: the page
// then comes back short (even empty) with a cursor to go on. A variable
// for tests.
var listScanBudget = 10000

// ListFilter selects messages still in the spool. Zero fields select
// everything. A message is listed when its metadata matches and at least
// one of its live recipients matches; only matching recipients are listed.
type ListFilter struct {
	// Queue is a delivery queue name (Route.QueueName): a domain, or
	// "relay:host:port".
	Queue string
	// State is StateQueued (never attempted), StateDeferred (attempted
	// at least once) or StateHeld (held by an operator, whether attempted
	// or not).
	State string
	// Sender selects one envelope sender: the local part compared
	// exactly, the domain without regard to case. A pointer to "" selects
	// the null sender (bounces).
	Sender *string
	// RcptDomain selects recipients in one domain (any case).
	RcptDomain string
	// Recipient selects one recipient address: the local part compared
	// exactly, the domain without regard to case.
	Recipient string
	// Tenant selects one tenant; a pointer to "" selects messages without
	// one (unauthenticated SMTP).
	Tenant *string
	// After and Before bound the received time: After <= received < Before.
	After, Before time.Time
	// Cursor continues a listing: Page.Next of the previous page.
	Cursor string
	// Limit is the most messages in a page: DefaultListLimit when <= 0,
	// at most MaxListLimit.
	Limit int
}

// ListedMessage is one message of a listing with its matching recipients.
type ListedMessage struct {
	ID         string
	Sender     string
	Tenant     string
	Source     string
	Tags       []string
	Received   time.Time
	Size       int
	Recipients []RecipientStatus // Updated is zero: live records do not keep it
}

// Page is one page of a listing.
type Page struct {
	Messages []ListedMessage
	// Next continues the listing; "" at its end. A page may hold fewer
	// than Limit messages (even none) with Next set: follow Next until it
	// is "".
	Next string
}

// List returns a page of the messages that still have queued or deferred
// recipients, ordered by message id (that is, by time received), matching
// f. It reads the recipient records from the cursor on, never from the
// start of the range. Safe for concurrent use; pages are read from
// different snapshots, so a message that finishes between two calls is
// simply absent from the later page, and none is listed twice.
func (s *Spool) List(f ListFilter) (*Page, error) {
	if err := f.Check(); err != nil {
		return nil, err
	}
	limit := f.Limit
	if limit <= 0 {
		limit = DefaultListLimit
	}
	if limit > MaxListLimit {
		limit = MaxListLimit
	}
	lower := []byte{kRcpt}
	if f.Cursor != "" {
		id, err := DecodeCursor(f.Cursor)
		if err != nil {
			return nil, err
		}
		lower = afterMessage(id)
	}
	if !f.After.IsZero() {
		if id, ok := idAt(f.After.Add(-idClockSlack), false); ok {
			if k := append([]byte{kRcpt}, id...); bytes.Compare(k, lower) > 0 {
				lower = k
			}
		}
	}
	upper := []byte{kRcpt + 1}
	if !f.Before.IsZero() {
		if id, ok := idAt(f.Before.Add(idClockSlack), true); ok {
			upper = afterMessage(id)
		}
	}
	page := &Page{Messages: []ListedMessage{}}
	if bytes.Compare(lower, upper) >= 0 {
		return page, nil
	}

	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	snap, done := s.snapshot()
	defer done()
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	mit, err := snap.NewIter(&pebble.IterOptions{LowerBound: []byte{kMeta}, UpperBound: []byte{kMeta + 1}})
	if err != nil {
		return nil, err
	}
	defer mit.Close()

	byMessage := f.Sender != nil || f.Tenant != nil || !f.After.IsZero() || !f.Before.IsZero()
	examined, lastExamined := 0, ""
	valid := it.First()
	for valid {
		k := it.Key()
		if len(k) != 1+ulid.EncodedSize+2 {
			valid = it.Next()
			continue
		}
		id := string(k[1 : 1+ulid.EncodedSize])
		if len(page.Messages) == limit || examined == listScanBudget {
			// Everything up to the last examined message is done, listed
			// or not: the next page starts after it.
			page.Next = EncodeCursor(lastExamined)
			break
		}
		examined, lastExamined = examined+1, id
		var (
			meta    *Meta
			metaErr error
			entry   *ListedMessage
		)
		loadMeta := func() bool {
			if meta == nil && metaErr == nil {
				meta, metaErr = metaAt(mit, id)
				if metaErr != nil {
					s.log.Error("spool: recipient without readable message metadata; not listed", "msgid", id, "err", metaErr)
				}
			}
			return metaErr == nil
		}
		skip := byMessage && (!loadMeta() || !f.MatchMeta(meta))
		for ; valid && !skip; valid = it.Next() {
			k := it.Key()
			if len(k) != 1+ulid.EncodedSize+2 || string(k[1:1+ulid.EncodedSize]) != id {
				break
			}
			var r Recipient
			if err := json.Unmarshal(it.Value(), &r); err != nil {
				s.log.Error("spool: corrupt recipient record; not listed", "msgid", id, "err", err)
				continue
			}
			r.MsgID, r.Idx = id, int(binary.BigEndian.Uint16(k[len(k)-2:]))
			if !f.MatchRecipient(&r) {
				continue
			}
			q, state := queueOf(&r), liveState(&r)
			if !loadMeta() {
				skip = true
				break
			}
			if entry == nil {
				page.Messages = append(page.Messages, ListedMessage{ID: id, Sender: meta.Sender, Tenant: meta.Tenant,
					Source: meta.Source, Tags: meta.Tags, Received: meta.Received, Size: meta.Size})
				entry = &page.Messages[len(page.Messages)-1]
			}
			entry.Recipients = append(entry.Recipients, RecipientStatus{Address: r.Address, State: state, Queue: q,
				Attempts: r.Attempts, NextAttempt: r.NextAttempt, LastResponse: r.LastReply})
		}
		if skip {
			valid = it.SeekGE(afterMessage(id))
		}
	}
	if err := it.Error(); err != nil {
		return nil, err
	}
	return page, nil
}

// Check validates f's state: "", StateQueued, StateDeferred or
// StateHeld.
func (f *ListFilter) Check() error {
	switch f.State {
	case "", StateQueued, StateDeferred, StateHeld:
		return nil
	}
	return fmt.Errorf("spool: list state %q: want %q, %q or %q", f.State, StateQueued, StateDeferred, StateHeld)
}

// MatchRecipient reports whether a live recipient record matches f's
// recipient fields: Queue (its route's queue name), State, RcptDomain
// and Recipient. The queue's control actions use it with MatchMeta.
func (f *ListFilter) MatchRecipient(r *Recipient) bool {
	if f.Queue != "" && queueOf(r) != f.Queue || f.State != "" && liveState(r) != f.State {
		return false
	}
	if f.RcptDomain != "" && !strings.EqualFold(r.Domain, strings.TrimSuffix(f.RcptDomain, ".")) {
		return false
	}
	return f.Recipient == "" || sameAddress(r.Address, f.Recipient)
}

// MatchMeta reports whether a message matches f's message fields:
// Tenant, Sender, After and Before.
func (f *ListFilter) MatchMeta(m *Meta) bool {
	if f.Tenant != nil && m.Tenant != *f.Tenant {
		return false
	}
	if f.Sender != nil && !sameAddress(m.Sender, *f.Sender) {
		return false
	}
	if !f.After.IsZero() && m.Received.Before(f.After) {
		return false
	}
	if !f.Before.IsZero() && !m.Received.Before(f.Before) {
		return false
	}
	return true
}

// sameAddress compares local parts exactly and domains without case.
func sameAddress(a, b string) bool {
	i, j := strings.LastIndexByte(a, '@'), strings.LastIndexByte(b, '@')
	if i < 0 || j < 0 {
		return a == b
	}
	return a[:i] == b[:j] && strings.EqualFold(strings.TrimSuffix(a[i+1:], "."), strings.TrimSuffix(b[j+1:], "."))
}

// metaAt reads message metadata through an iterator over the metadata
// range; List seeks it forward only, which Pebble does cheaply.
func metaAt(it *pebble.Iterator, id string) (*Meta, error) {
	v, err := valueAt(it, metaKey(id))
	if err != nil {
		return nil, err
	}
	var m Meta
	if err := json.Unmarshal(v, &m); err != nil {
		return nil, fmt.Errorf("corrupt metadata: %w", err)
	}
	return &m, nil
}

// valueAt seeks it to the key k and returns its value (valid until it
// moves), or pebble.ErrNotFound when k is not there.
func valueAt(it *pebble.Iterator, k []byte) ([]byte, error) {
	if !it.SeekGE(k) || !bytes.Equal(it.Key(), k) {
		if err := it.Error(); err != nil {
			return nil, err
		}
		return nil, pebble.ErrNotFound
	}
	return it.Value(), nil
}

// idAt returns the smallest (or, with top, the largest) id of time t; ok
// is false when t is outside what an id can hold.
func idAt(t time.Time, top bool) (string, bool) {
	if t.Before(time.Unix(0, 0)) {
		return "", false
	}
	var id ulid.ULID
	if err := id.SetTime(ulid.Timestamp(t)); err != nil {
		return "", false
	}
	if top {
		for i := 6; i < len(id); i++ {
			id[i] = 0xff
		}
	}
	return id.String(), true
}

// EncodeCursor returns the opaque cursor that continues a listing after
// message id.
func EncodeCursor(id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte("1" + id))
}

// DecodeCursor returns the message id a cursor continues after, or
// ErrBadCursor.
func DecodeCursor(c string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(b) != 1+ulid.EncodedSize || b[0] != '1' {
		return "", ErrBadCursor
	}
	id := string(b[1:])
	if _, err := ulid.ParseStrict(id); err != nil {
		return "", ErrBadCursor
	}
	return id, nil
}
