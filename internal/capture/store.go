// Package capture is Sluice's sandbox: mail routed to a capture route
// (sluice.route.capture, a sandbox tenant, a sandbox SMTP listener) is
// delivered into its tenant's inbox here instead of to the world. The
// capture happens at delivery time, after every stage (signed, rewritten,
// routed) and through the queue's normal outcome handling: a Conn
// (conn.go) stands in for an SMTP session and answers each recipient
// with an accepted reply or the reply a simulated recipient rule gives
// (simulate.go), so events, bounce classes, DSNs, suppression, Kafka
// records and webhooks are exactly those of real mail.
//
// What it is not: a mail server for the captured mail's recipients, or
// an archive. Each tenant's inbox is bounded by retention limits (count,
// bytes, age); the oldest messages are dropped past them, each with a
// "sandbox_dropped" event.
//
// Storage: its own Pebble database in its own directory (default
// "sandbox" beside the spool), not the spool's. The spool is the queue's
// source of truth, scanned from remembered cursors and kept small by
// deleting delivered mail; captured mail is the opposite (kept until
// retention drops it, read by search and by tests). A separate database
// keeps retention's deletes and the inbox's reads out of the queue's
// scans and compactions, gives it a small memtable of its own, and lets
// an operator wipe every sandbox by deleting one directory. The cost: a
// capture and its delivery outcome are two writes in two databases, so a
// crash between them captures the message again at the retry (a capture
// is in the operating system before Put returns, so a process crash
// loses none; it is synced to disk within Options.SyncLag, so a power
// failure can lose the last SyncLag of them: walsync.go).
//
// Key layout:
//
//	s<tenant>\x00<id>   summary (binary, summary_codec.go; JSON before)
//	c<id>               the message's bytes as delivered, S2-compressed
//	u<tenant>\x00<id>   searchable text: subject and text part, lower case,
//	                    S2-compressed
//	b<id>, t<tenant>\x00<id>
//	                    the same two uncompressed (stores written before;
//	                    read, never written: packed.go)
//
// The values are compressed before the commit (a quarter of the bytes in
// the write-ahead log, the memtable, flushes and compactions for ordinary
// mail), so the tables are written without Pebble's block compression.
// Tables are cut where the key kind changes (kindSpans): each kind's keys
// ascend with the ids, so while the store grows the tables of successive
// flushes do not overlap and leave level 0 without being rewritten.
//
// The summaries are also kept in memory (an index per tenant, oldest
// first, and by exact address), loaded at Open: list, search by address,
// subject, tag and time never touch the disk. So is an inverted index of
// the texts' words (words.go), built from the text range at Open: a
// search by one word is answered from it; a phrase reads the texts of the
// messages holding all its words side by side (the index keeps the
// words' positions), newest first, until the page is full.
//
// Concurrency: every method is safe for concurrent use.
package capture

import (
	"cmp"
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/pipeline"
)

const (
	kSummary = 's'
	kBody    = 'b'
	kText    = 't'
)

// EventSandboxDropped is the type of the event recorded for each
// captured message retention drops.
const EventSandboxDropped = pipeline.EventSandboxDropped

// Summary describes one captured message.
type Summary struct {
	ID     string `json:"id"`
	Tenant string `json:"tenant"`
	// MessageID is the spooled message's id: its events and status
	// (GET /v1/messages/{id}) are under it.
	MessageID string    `json:"message_id"`
	Created   time.Time `json:"created"`
	// Sender and Recipients are the envelope (MAIL FROM, RCPT TO) of the
	// capture delivery: the recipients it accepted.
	Sender     string   `json:"sender"`
	Recipients []string `json:"recipients"`
	// From, To, Cc and Subject are from the header (addresses only).
	From        string   `json:"from"`
	To          []string `json:"to"`
	Cc          []string `json:"cc"`
	Subject     string   `json:"subject"`
	HeaderID    string   `json:"message_id_header,omitempty"`
	Tags        []string `json:"tags"`
	Size        int      `json:"size"`
	Attachments int      `json:"attachment_count"`
	Source      string   `json:"source,omitempty"`
}

// entry is a summary in the in-memory index, with lower-cased fields
// for matching.
type entry struct {
	s       *Summary
	from    string // lower case: header From and envelope sender, "\n"-joined
	to      string // lower case: To, Cc and envelope recipients, "\n"-joined
	subject string // lower case
	removed bool   // deleted; still in byAddr until pruned (s.mu)
	// seq numbers the tenant's entries in index order (words.go);
	// postings is how many word postings list it.
	seq      uint64
	postings int
}

// tenantIndex is one tenant's inbox in memory, oldest first.
type tenantIndex struct {
	entries []*entry
	bytes   int64
	// nextSeq is the next entry's seq; words indexes the entries' texts.
	nextSeq uint64
	words   wordIndex
}

// Options configures Open.
type Options struct {
	Retention config.SandboxRetention
	// Simulate are the simulated recipient rules (simulate.go).
	Simulate []config.SimulateRule
	// LinksAllow are the hosts the links assertion may fetch.
	LinksAllow []string
	// Record writes events (retention drops) to the event outbox; nil:
	// none are written.
	Record func(evs []*pipeline.Event) error
	// History returns the event timeline of a spooled message; nil:
	// timelines are empty.
	History func(msgID string) ([]pipeline.Event, error)
	// MessageInfo returns the tenant-independent facts of a spooled
	// message a capture records (tags, source); nil: none.
	MessageInfo func(msgID string) (tags []string, source string)
	// Complain records a simulated complaint by rcpt about the spooled
	// message msgID (a "complained" event, a suppression entry); called
	// about a second after the capture, on a goroutine the store owns.
	// nil: complaint rules do nothing.
	Complain func(msgID, rcpt string)
	// LookupTXT resolves TXT records for the DKIM assertion; nil: the
	// system resolver.
	LookupTXT func(ctx context.Context, name string) ([]string, error)
	Logger    *slog.Logger
	Now       func() time.Time
	// MemtableMB is Pebble's memtable size; default 8.
	MemtableMB int
	// SyncLag bounds how long a capture stays written to the operating
	// system but not synced to disk (walsync.go): 0 means
	// DefaultSyncLag; negative, every capture group is synced before
	// Put returns.
	SyncLag time.Duration
	// FS replaces the filesystem (tests); nil: the operating system's.
	FS vfs.FS
}

// Store is the sandbox's capture store.
type Store struct {
	o   Options
	db  *pebble.DB
	log *slog.Logger
	sim *simulator

	mu      sync.RWMutex
	tenants map[string]*tenantIndex
	byID    map[string]*entry
	// byAddr indexes entries by each lower-cased To, Cc and envelope
	// recipient address, per tenant ("tenant\x00addr"); removed entries
	// are pruned when the address is next looked up.
	byAddr map[string][]*entry

	entropyMu sync.Mutex
	entropy   *ulid.MonotonicEntropy
	// Captures are indexed in the order of their ids, the order Open
	// lists them in after a restart: newID hands out tickets (ticket,
	// under entropyMu) and a capture indexes on its turn (turn, under
	// mu; turnCond waits on mu), after every capture with an earlier id
	// has been indexed or has failed. Without it, concurrent captures
	// committed out of id order were listed in one order until a
	// restart and in another after.
	ticket   uint64
	turn     uint64
	turnCond *sync.Cond

	hub *hub
	// lag is the filesystem whose log syncs syncLoop does (nil: SyncLag
	// negative, Pebble syncs each commit).
	lag *lagFS

	stop chan struct{}
	// bg counts the background loops (age sweep, log sync).
	bg sync.WaitGroup
	// later runs delayed work (complaints) until Close.
	later sync.WaitGroup
}

// Open opens (creating if needed) the capture store in dir, loads its
// index, and starts the age sweep (every minute). Close stops it.
func Open(dir string, o Options) (*Store, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MemtableMB <= 0 {
		o.MemtableMB = 8
	}
	fs := o.FS
	if fs == nil {
		fs = vfs.Default
	}
	if err := fs.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("sandbox store %s: %w", dir, err)
	}
	log := o.Logger.With("component", "sandbox")
	po := &pebble.Options{MemTableSize: uint64(o.MemtableMB) << 20, Logger: pebbleLog{log}, FS: fs}
	var lag *lagFS
	if o.SyncLag >= 0 {
		lag = newLagFS(fs)
		po.FS = lag
	}
	// Bodies and texts are packed before the commit (packed.go).
	po.ApplyCompressionSettings(func() pebble.DBCompressionSettings { return pebble.DBCompressionNone })
	// A flush writes one table per key kind: each kind's keys ascend
	// (ids are ULIDs), so a growing single-tenant store's tables do not
	// overlap and leave level 0 without rewriting (no compaction until
	// retention deletes old keys).
	po.Experimental.SpanPolicyFunc = kindSpans
	db, err := pebble.Open(dir, po)
	if err != nil {
		hint := ""
		if strings.Contains(err.Error(), "lock") {
			hint = " (is another sluice using it?)"
		}
		return nil, fmt.Errorf("sandbox store %s: %w%s", dir, err, hint)
	}
	s := &Store{o: o, db: db, log: log, tenants: map[string]*tenantIndex{}, byID: map[string]*entry{}, byAddr: map[string][]*entry{},
		entropy: ulid.Monotonic(rand.Reader, 0), hub: newHub(), lag: lag, stop: make(chan struct{})}
	s.turnCond = sync.NewCond(&s.mu)
	if s.sim, err = newSimulator(o.Simulate); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.load(); err != nil {
		db.Close()
		return nil, fmt.Errorf("sandbox store %s: %w", dir, err)
	}
	s.bg.Add(1)
	go s.sweepLoop()
	if lag != nil {
		s.bg.Add(1)
		go s.syncLoop(cmp.Or(o.SyncLag, DefaultSyncLag))
	}
	return s, nil
}

// Close stops the age sweep and closes the database; waits end with 503.
func (s *Store) Close() error {
	close(s.stop)
	s.bg.Wait()
	s.later.Wait()
	s.hub.close()
	s.logMetrics()
	return s.db.Close()
}

// load reads every summary into the index, then every text into the
// word index.
func (s *Store) load() error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{kSummary}, UpperBound: []byte{kSummary + 1}})
	if err != nil {
		return err
	}
	defer it.Close()
	n := 0
	for it.First(); it.Valid(); it.Next() {
		sm, err := decodeSummary(it.Value())
		if err != nil {
			s.log.Error("corrupt captured message summary; skipped", "key", string(it.Key()), "err", err)
			continue
		}
		s.index(sm)
		n++
	}
	if err := it.Error(); err != nil {
		return err
	}
	// Keys sort by tenant then id; each tenant's slice must be by id,
	// and numbered in that order.
	for _, t := range s.tenants {
		sort.Slice(t.entries, func(i, j int) bool { return t.entries[i].s.ID < t.entries[j].s.ID })
		for i, e := range t.entries {
			e.seq = uint64(i)
		}
		t.nextSeq = uint64(len(t.entries))
	}
	if err := s.loadWords(); err != nil {
		return err
	}
	if n > 0 {
		s.log.Info("sandbox store opened", "messages", n, "tenants", len(s.tenants))
	}
	return nil
}

// index adds sm to the in-memory index (s.mu held or not yet shared).
func (s *Store) index(sm *Summary) *entry {
	e := &entry{s: sm,
		from:    strings.ToLower(sm.From + "\n" + sm.Sender),
		to:      strings.ToLower(strings.Join(sm.To, "\n") + "\n" + strings.Join(sm.Cc, "\n") + "\n" + strings.Join(sm.Recipients, "\n")),
		subject: strings.ToLower(sm.Subject)}
	t := s.tenants[sm.Tenant]
	if t == nil {
		t = &tenantIndex{}
		s.tenants[sm.Tenant] = t
	}
	e.seq = t.nextSeq
	t.nextSeq++
	t.entries = append(t.entries, e)
	t.bytes += int64(sm.Size)
	s.byID[sm.ID] = e
	seen := map[string]bool{}
	for _, l := range [][]string{sm.To, sm.Cc, sm.Recipients} {
		for _, a := range l {
			k := addrKey(sm.Tenant, strings.ToLower(a))
			if !seen[k] {
				seen[k] = true
				s.byAddr[k] = append(s.byAddr[k], e)
			}
		}
	}
	return e
}

// addrKey is the key of tenant's address a (lower case) in byAddr.
func addrKey(tenant, a string) string { return tenant + "\x00" + a }

// newID returns a new capture id, ascending, and its ticket: the caller
// must call takeTurn(ticket) then endTurn once, whether it indexes the
// capture or not, or later captures wait forever.
func (s *Store) newID() (string, uint64) {
	s.entropyMu.Lock()
	defer s.entropyMu.Unlock()
	s.ticket++
	return ulid.MustNew(ulid.Timestamp(s.o.Now()), s.entropy).String(), s.ticket - 1
}

// takeTurn waits until every capture with an earlier ticket has ended
// its turn; s.mu held (released while waiting).
func (s *Store) takeTurn(ticket uint64) {
	for s.turn != ticket {
		s.turnCond.Wait()
	}
}

// endTurn lets the next ticket's capture index; s.mu held.
func (s *Store) endTurn() {
	s.turn++
	s.turnCond.Broadcast()
}

// tenantKey is kind, tenant, 0, id.
func tenantKey(kind byte, tenant, id string) []byte {
	k := make([]byte, 0, 2+len(tenant)+len(id))
	k = append(k, kind)
	k = append(k, tenant...)
	k = append(k, 0)
	return append(k, id...)
}

func summaryKey(tenant, id string) []byte { return tenantKey(kSummary, tenant, id) }
func bodyKey(id string) []byte            { return append([]byte{kBody}, id...) }
func textKey(tenant, id string) []byte    { return tenantKey(kText, tenant, id) }

// Put captures data into tenant's inbox for the given envelope and
// returns its summary once written. It then wakes the tenant's waiters
// and applies the retention limits.
//
// The write is in the operating system before Put returns (its
// write-ahead log record written; synced to disk within
// Options.SyncLag, or before Put returns when SyncLag is negative): a
// capture is the message's delivery, and the queue records the
// recipient delivered once Put has returned, so a kill -9 right after
// must not lose it (walsync.go says what a power failure can lose).
// Concurrent Puts share one log write (Pebble's commit pipeline groups
// synced commits).
//
// The spooled message msgID's tags and source are read through
// Options.MessageInfo; see PutInfo.
func (s *Store) Put(tenant, msgID, sender string, rcpts []string, data []byte) (*Summary, error) {
	return s.PutInfo(tenant, msgID, sender, rcpts, data, nil, "")
}

// PutInfo is Put with the spooled message's tags and source given (a
// capture delivery has them in its envelope): Options.MessageInfo is
// not called. source "" is Put.
func (s *Store) PutInfo(tenant, msgID, sender string, rcpts []string, data []byte, tags []string, source string) (*Summary, error) {
	if err := s.syncErr(); err != nil {
		return nil, err // the disk lost writes (walsync.go)
	}
	p := parseSummary(data)
	sm := &Summary{Tenant: tenant, MessageID: msgID, Created: s.o.Now().UTC(), Sender: sender,
		Recipients: rcpts, From: p.from, To: p.to, Cc: p.cc, Subject: p.subject, HeaderID: p.messageID,
		Size: len(data), Attachments: p.attachments, Tags: []string{}}
	if source == "" && s.o.MessageInfo != nil && msgID != "" {
		tags, source = s.o.MessageInfo(msgID)
	}
	if tags != nil {
		sm.Tags = slices.Clone(tags)
	}
	sm.Source = source
	if sm.To == nil {
		sm.To = []string{}
	}
	if sm.Cc == nil {
		sm.Cc = []string{}
	}
	// From here every path takes its turn (newID).
	var ticket uint64
	sm.ID, ticket = s.newID()
	v := encodeSummary(make([]byte, 0, 256), sm)
	st := newSearchText(sm.Subject, p.text)
	defer st.release()
	b := s.db.NewBatch()
	_ = b.Set(summaryKey(tenant, sm.ID), v, nil)
	setPacked(b, bodyZKey(sm.ID), data)
	setPacked(b, textZKey(tenant, sm.ID), st.text)
	if err := b.Commit(pebble.Sync); err != nil {
		b.Close()
		s.mu.Lock()
		s.takeTurn(ticket)
		s.endTurn()
		s.mu.Unlock()
		return nil, fmt.Errorf("sandbox store: %w", err)
	}
	b.Close()
	s.mu.Lock()
	s.takeTurn(ticket)
	e := s.index(sm)
	s.tenants[tenant].addSplit(e, st)
	s.endTurn()
	s.mu.Unlock()
	s.hub.publish(e, st.text)
	s.enforce(tenant)
	return sm, nil
}

// Get returns a captured message's summary (tenant's only).
func (s *Store) Get(tenant, id string) (*Summary, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e := s.byID[id]
	if e == nil || e.s.Tenant != tenant {
		return nil, false
	}
	return e.s, true
}

// Raw returns a captured message's bytes (tenant's only).
func (s *Store) Raw(tenant, id string) ([]byte, bool, error) {
	if _, ok := s.Get(tenant, id); !ok {
		return nil, false, nil
	}
	return s.body(id)
}

// Events returns the event timeline of a captured message's spooled
// message, oldest first.
func (s *Store) Events(sm *Summary) ([]pipeline.Event, error) {
	if s.o.History == nil || sm.MessageID == "" {
		return []pipeline.Event{}, nil
	}
	evs, err := s.o.History(sm.MessageID)
	if evs == nil {
		evs = []pipeline.Event{}
	}
	return evs, err
}

// Delete removes one captured message of tenant; false when there is
// none. The delete is synced to disk before it returns.
func (s *Store) Delete(tenant, id string) (bool, error) {
	s.mu.Lock()
	e := s.byID[id]
	if e == nil || e.s.Tenant != tenant {
		s.mu.Unlock()
		return false, nil
	}
	s.unindex([]*entry{e})
	s.mu.Unlock()
	return true, s.deleteKeys([]*entry{e}, pebble.Sync)
}

// DeleteAll removes every captured message of tenant and returns how
// many. The delete is synced to disk before it returns.
func (s *Store) DeleteAll(tenant string) (int, error) {
	s.mu.Lock()
	t := s.tenants[tenant]
	if t == nil {
		s.mu.Unlock()
		return 0, nil
	}
	es := append([]*entry(nil), t.entries...)
	s.unindex(es)
	s.mu.Unlock()
	return len(es), s.deleteKeys(es, pebble.Sync)
}

// unindex removes es (of one tenant) from the index; s.mu held.
func (s *Store) unindex(es []*entry) {
	if len(es) == 0 {
		return
	}
	gone := make(map[*entry]bool, len(es))
	for _, e := range es {
		gone[e] = true
		delete(s.byID, e.s.ID)
		e.removed = true
	}
	t := s.tenants[es[0].s.Tenant]
	if t == nil {
		return
	}
	// Retention drops the oldest: a prefix, cut without copying.
	i := 0
	for i < len(t.entries) && gone[t.entries[i]] {
		t.bytes -= int64(t.entries[i].s.Size)
		t.entries[i] = nil
		i++
	}
	t.entries = t.entries[i:]
	if len(gone) > i {
		kept := t.entries[:0]
		for _, e := range t.entries {
			if gone[e] {
				t.bytes -= int64(e.s.Size)
				continue
			}
			kept = append(kept, e)
		}
		clear(t.entries[len(kept):])
		t.entries = kept
	}
	if len(t.entries) == 0 {
		delete(s.tenants, es[0].s.Tenant)
	} else {
		t.removedWords(es)
	}
	for _, e := range es {
		for _, l := range [][]string{e.s.To, e.s.Cc, e.s.Recipients} {
			for _, a := range l {
				k := addrKey(e.s.Tenant, strings.ToLower(a))
				list := s.byAddr[k]
				kept := list[:0]
				for _, x := range list {
					if !x.removed {
						kept = append(kept, x)
					}
				}
				clear(list[len(kept):])
				if len(kept) == 0 {
					delete(s.byAddr, k)
				} else {
					s.byAddr[k] = kept
				}
			}
		}
	}
}

// deleteKeys deletes es's keys. Delete and DeleteAll sync (a delete the
// API answered must not come back after a crash); retention does not
// (the next capture's synced commit persists its deletes, and a drop
// lost to a crash is redone after the restart, by the minute sweep or
// the tenant's next capture).
func (s *Store) deleteKeys(es []*entry, sync *pebble.WriteOptions) error {
	b := s.db.NewBatch()
	defer b.Close()
	for _, e := range es {
		_ = b.Delete(summaryKey(e.s.Tenant, e.s.ID), nil)
		_ = b.Delete(bodyKey(e.s.ID), nil)
		_ = b.Delete(textKey(e.s.Tenant, e.s.ID), nil)
		_ = b.Delete(bodyZKey(e.s.ID), nil)
		_ = b.Delete(textZKey(e.s.Tenant, e.s.ID), nil)
	}
	if err := b.Commit(sync); err != nil {
		return fmt.Errorf("sandbox store: %w", err)
	}
	if sync.Sync {
		// The commit reached the operating system; a delete is synced
		// to disk before it is answered (walsync.go).
		if err := s.syncWAL(); err != nil {
			return fmt.Errorf("sandbox store: %w", err)
		}
	}
	return nil
}

// enforce drops tenant's oldest messages past the retention limits (all
// tenants when tenant is ""), each with a sandbox_dropped event.
func (s *Store) enforce(tenant string) {
	r := s.o.Retention
	cutoff := time.Time{}
	if r.Age > 0 {
		cutoff = s.o.Now().Add(-r.Age)
	}
	type drop struct {
		e      *entry
		reason string
	}
	var drops []drop
	s.mu.Lock()
	for name, t := range s.tenants {
		if tenant != "" && name != tenant {
			continue
		}
		n, size := len(t.entries), t.bytes
		// A message larger than the byte limit by itself can never fit:
		// it is dropped alone rather than evicting every older message
		// first to make room it would not find.
		alone := map[*entry]bool{}
		// After a capture (tenant set) only the newest can be alone: the
		// others were checked when they came. The minute sweep checks
		// every message (a limit lowered at a restart).
		check := t.entries
		if tenant != "" && len(check) > 0 {
			check = check[len(check)-1:]
		}
		if r.Bytes > 0 {
			for _, e := range check {
				if int64(e.s.Size) > r.Bytes {
					alone[e] = true
					drops = append(drops, drop{e, fmt.Sprintf("sandbox retention: larger than %d bytes", r.Bytes)})
					n--
					size -= int64(e.s.Size)
				}
			}
		}
		for i := 0; i < len(t.entries); i++ {
			e := t.entries[i]
			if alone[e] {
				continue
			}
			var reason string
			switch {
			case r.Messages > 0 && n > r.Messages:
				reason = fmt.Sprintf("sandbox retention: more than %d messages", r.Messages)
			case r.Bytes > 0 && size > r.Bytes:
				reason = fmt.Sprintf("sandbox retention: more than %d bytes", r.Bytes)
			case !cutoff.IsZero() && e.s.Created.Before(cutoff):
				reason = fmt.Sprintf("sandbox retention: older than %s", r.Age)
			}
			if reason == "" {
				break
			}
			drops = append(drops, drop{e, reason})
			n--
			size -= int64(e.s.Size)
		}
	}
	if len(drops) == 0 {
		s.mu.Unlock()
		return
	}
	byTenant := map[string][]*entry{}
	for _, d := range drops {
		byTenant[d.e.s.Tenant] = append(byTenant[d.e.s.Tenant], d.e)
	}
	all := make([]*entry, 0, len(drops))
	for _, es := range byTenant {
		s.unindex(es)
		all = append(all, es...)
	}
	s.mu.Unlock()
	if err := s.deleteKeys(all, pebble.NoSync); err != nil {
		s.log.Warn("cannot delete captured messages past retention; they are dropped from the inbox and deleted at the next restart's sweep", "err", err)
	}
	if s.o.Record == nil {
		return
	}
	evs := make([]*pipeline.Event, 0, len(drops))
	for _, d := range drops {
		sm := d.e.s
		rcpt := ""
		if len(sm.Recipients) > 0 {
			rcpt = sm.Recipients[0]
		}
		evs = append(evs, &pipeline.Event{Type: EventSandboxDropped, MessageID: sm.MessageID, Recipient: rcpt, Sender: sm.Sender,
			Source: sm.Source, Tenant: sm.Tenant, Queue: "sandbox:" + sm.Tenant, Tags: sm.Tags, Size: sm.Size,
			Response: &pipeline.Response{Code: 250, Enhanced: "2.0.0", Text: d.reason + "; captured message " + sm.ID + " dropped"}})
	}
	if err := s.o.Record(evs); err != nil {
		s.log.Warn("cannot record sandbox retention events", "n", len(evs), "err", err)
	}
}

// sweepLoop applies the age limit every minute.
func (s *Store) sweepLoop() {
	defer s.bg.Done()
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.enforce("")
		}
	}
}

// pebbleLog sends Pebble's lines to slog; a Fatalf parks its goroutine
// (Pebble's state cannot be trusted after it), as the spool's does.
type pebbleLog struct{ l *slog.Logger }

func (p pebbleLog) Infof(format string, args ...any) {
	p.l.Debug("pebble: " + fmt.Sprintf(format, args...))
}
func (p pebbleLog) Errorf(format string, args ...any) {
	p.l.Error("pebble: " + fmt.Sprintf(format, args...))
}
func (p pebbleLog) Fatalf(format string, args ...any) {
	p.l.Error("pebble fatal error; the sandbox store stops (restart to recover): " + fmt.Sprintf(format, args...))
	select {}
}
