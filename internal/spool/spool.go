// Package spool is Sluice's durable store: accepted messages, the delivery
// state of each of their recipients, and the event outbox, all in one
// Pebble database so that a state change and the event describing it are
// written in one atomic batch.
//
// Why Pebble and not files: an acceptance writes the message, its
// recipients with their routes and its "received" events in one batch, and
// concurrent synced commits share one WAL fsync (group commit), which is
// what lets many sessions acknowledge at once for the price of one sync.
//
// Key layout (all keys start with a one-byte kind):
//
//	m<msgid>            message metadata (JSON Meta)
//	b<msgid>            message bytes (header + body, CRLF)
//	r<msgid><idx:2>     one queued recipient (JSON Recipient)
//	e<seq:8>            outbox event (type, message id, JSON pipeline.Event; see
//	                    cursor.go), deleted once every consumer has taken it
//	c<name>             an outbox consumer's cursor: the next seq it takes
//	n                   event seq floor: seqs below it are never assigned again
//	h<msgid><eventid>   event history of a message, for status queries
//	i<key>              an HTTP idempotency record (the stored answer), until it expires
//	s<tenant>\x00<addr>  a suppression list entry (suppression.go)
//	p<queue>            a paused delivery queue (control.go)
//
// Durability contract: Commit(true) returns after an fsync; acceptance uses
// it. Delivery outcomes commit without a sync: a crash can only roll back a
// whole outcome batch (recipient state and its event together), so the
// message is delivered again: at least once, never lost. The outbox reader
// syncs the WAL before it reads, so an exported event always describes a
// durable state.
//
// Disk space (disk.go): a full disk degrades service, it never crashes
// the relay. Acceptance is refused with 452 4.3.1 (HTTP 507) below the
// free-space reserve (Options.MinFree); every write is refused below a
// write floor (a quarter of the reserve) so Pebble does not meet ENOSPC;
// Pebble's Fatalf fails the spool and parks its goroutine instead of
// exiting (a restart is then needed, and said in the log); a write stuck
// past the write timeout stalls the spool until a probe write succeeds;
// below the reserve at start the spool opens read-only and switches to
// writing on its own once there is room. Reclaim gives the space of
// delivered mail back while running (memtable flush past 16 MiB of WAL,
// compaction of delivered ranges, no WAL recycling unless
// Options.WALRecycling; instead, zeros are written ahead of the live WAL's
// end so that each sync is an overwrite, walzero.go). Size, FreeBytes,
// Full, ReadOnly and Writable are the numbers for metrics.
//
// Concurrency: every method is safe for concurrent use. Readers hold
// dbMu (read) while they use the database; the switch from the read-only
// to the writable database takes it for writing (with TryLock, so a
// reader may hold it twice).
package spool

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/pipeline"
)

const (
	kMeta    = 'm'
	kBody    = 'b'
	kRcpt    = 'r'
	kEvent   = 'e'
	kHistory = 'h'
)

// Meta is what the spool keeps about a message besides its bytes.
type Meta struct {
	ID       string            `json:"id"`
	Source   string            `json:"source"`
	Sender   string            `json:"sender"`
	Tenant   string            `json:"tenant,omitempty"`
	Identity string            `json:"identity,omitempty"`
	Tags     []string          `json:"tags,omitempty"`
	Meta     map[string]string `json:"meta,omitempty"`
	Received time.Time         `json:"received"`
	Size     int               `json:"size"`
	// Params are the MAIL FROM parameters that go to the next hop.
	Params pipeline.MailParams `json:"params,omitempty"`
}

// Recipient is one recipient still to be delivered.
type Recipient struct {
	MsgID       string             `json:"-"`
	Idx         int                `json:"-"`
	Address     string             `json:"addr"`
	Domain      string             `json:"domain"`
	Route       *pipeline.Route    `json:"route"`
	Attempts    int                `json:"attempts,omitempty"`
	NextAttempt time.Time          `json:"next,omitempty"`
	LastReply   *pipeline.Response `json:"last,omitempty"`
	// Params are the recipient's RCPT TO parameters (DSN NOTIFY, ORCPT).
	Params pipeline.RcptParams `json:"params,omitempty"`
	// Warned is when the sender was last sent a delay warning ("delayed"
	// DSN) about this recipient; zero: never. Set by relay.Notify in the
	// outcome batch, so it survives a restart; keep it when rewriting the
	// recipient (the queue copies the whole struct).
	Warned time.Time `json:"warned,omitempty"`
	// Held is true while an operator holds the recipient (queue control,
	// control.go): the queue makes no attempt until it is released.
	Held bool `json:"held,omitempty"`
}

// Options configures Open.
type Options struct {
	// MemtableMB is the size of pebble's memtable in MiB; 0 means
	// config.Defaults().Spool.MemtableMB.
	MemtableMB int
	Logger     *slog.Logger
	// Node is copied into every event's "node" field.
	Node string
	// MinFree is the free space (bytes) the spool's filesystem keeps in
	// reserve: below it CheckSpace refuses new mail. 0 means
	// DefaultMinFree; negative disables the check.
	MinFree int64
	// FS replaces the filesystem (tests inject faults); nil: the OS's.
	FS vfs.FS
	// WALRecycling keeps up to three obsolete write-ahead log files (each
	// up to a memtable's size) and overwrites them in place instead of
	// appending to fresh files: a sync then needs no filesystem journal
	// commit for the file's new size, which made one SMTP session about
	// 30% faster (10% less CPU per message) in BENCHMARKS.md "Issue 21:
	// one session". The cost is disk: up to three obsolete WAL files,
	// each allocated at 110% of the memtable size (about 211 MiB at the
	// default memtable_mb), stay allocated on top of the live WAL,
	// holding delivered mail until overwritten, which is why it is off by
	// default (issue 14 item 7). Pebble deletes them when it opens the
	// database for writing; a read-only open (below the reserve at start)
	// keeps them, so they count against MinFree after a crash.
	// sluice.spool { wal_recycling = true }.
	WALRecycling bool
	// NoWALZeroAhead turns off writing zeros ahead of the live WAL's end
	// (walzero.go), which is on by default unless WALRecycling is: with it
	// each acceptance's fdatasync overwrites written blocks and needs no
	// filesystem journal commit. sluice.spool { wal_zero_ahead = false }.
	NoWALZeroAhead bool
	// WriteTimeout bounds one spool write (see write); 0 means the
	// default, 60 s; negative, no bound.
	WriteTimeout time.Duration
	// SyncLag bounds how long a batch committed without fsync (delivery
	// outcomes, outbox prunes; SetCursor's writes are not counted, a
	// cursor may roll back) stays only in the process's memory: Pebble keeps
	// a partly filled WAL block until the next synced commit, so after a
	// kill -9 of a relay that is only draining its queue, deliveries
	// older than that would be made again. 0 means DefaultSyncLag;
	// negative, no background sync.
	SyncLag time.Duration
}

// DefaultSyncLag is Options.SyncLag's default: at most five background
// fsyncs a second, only while unsynced writes wait.
const DefaultSyncLag = 200 * time.Millisecond

// Spool is safe for concurrent use.
type Spool struct {
	db   *pebble.DB
	log  *slog.Logger
	node string

	seqMu    sync.Mutex
	nextSeq  uint64
	inflight map[uint64]struct{} // event seqs assigned but not yet committed
	notify   chan struct{}       // signalled after a commit that added events

	syncedBelow atomic.Uint64 // every event below this seq is durable

	pruneMu   sync.Mutex
	outboxLow uint64 // no outbox event below this seq is left
	seqFloor  uint64 // the stored seq floor

	entropyMu sync.Mutex
	entropy   *ulid.MonotonicEntropy

	// Disk space (disk.go).
	fs           vfs.FS
	path         string
	minFree      int64
	writeTimeout time.Duration
	space        spaceState
	fail         atomic.Pointer[error]
	recovering   atomic.Bool   // recoverWrites runs
	opened       atomic.Bool   // Open returned
	lastSize     atomic.Uint64 // Size's last figure
	readOnly     atomic.Bool   // opened read-only below the reserve; see waitForRoom
	dbMu         sync.RWMutex  // read: db in use; write: db being switched or closed
	closed       atomic.Bool   // Close closed the database: writes fail with errClosed
	gen          int           // db switches, under dbMu
	lock         *pebble.Lock  // the directory lock, held until Close
	memtable     uint64        // Pebble memtable size, bytes
	recycle      bool          // Options.WALRecycling
	noZeroAhead  bool          // Options.NoWALZeroAhead
	zeroActive   atomic.Int32  // WAL zero-ahead extensions running
	plog         *pebbleLogger // Pebble's logger; its Fatalf fails the spool
	closing      chan struct{} // closed by Close
	bg           sync.WaitGroup
	unsynced     atomic.Bool  // a write committed without fsync since the last background sync
	deleted      atomic.Int64 // messages deleted since the last compaction
	lastReclaim  atomic.Value // time.Time
	reclaimed    atomic.Bool  // Reclaim has compacted since Open (reclaimGap applies)

	supp suppState // the suppression list's policy (suppression.go)

	writeq      chan *writeReq // to a waiting writer goroutine (writers.go)
	idleWriters atomic.Int32   // writer goroutines waiting on writeq
	commits     atomic.Uint64  // batches committed (Commits)
}

// Open opens (creating if needed) the spool at path.
func Open(path string, o Options) (*Spool, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MemtableMB <= 0 {
		o.MemtableMB = config.Defaults().Spool.MemtableMB
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = 60 * time.Second
	}
	if o.MinFree == 0 {
		o.MinFree = DefaultMinFree
	}
	if o.FS == nil {
		o.FS = vfs.Default
	}
	s := &Spool{
		log: o.Logger, node: o.Node,
		inflight: map[uint64]struct{}{},
		notify:   make(chan struct{}, 1),
		entropy:  ulid.Monotonic(newEntropy(), 0),
		fs:       o.FS, path: path, minFree: o.MinFree, writeTimeout: o.WriteTimeout,
		memtable:    uint64(o.MemtableMB) << 20,
		recycle:     o.WALRecycling,
		noZeroAhead: o.NoWALZeroAhead,
		plog:        newPebbleLogger(o.Logger.With("component", "pebble")),
		closing:     make(chan struct{}),
		writeq:      make(chan *writeReq),
	}
	onFatal := func(msg string) { s.markFailed(msg, true) }
	s.plog.onFatal.Store(&onFatal)
	s.lastReclaim.Store(time.Now())
	if err := o.FS.MkdirAll(path, 0o755); err != nil {
		return nil, fmt.Errorf("open spool %s: %w", path, err)
	}
	// The directory lock is the spool's, for its whole life: the read-only
	// and the writable database may then be open at once while switching.
	lock, err := pebble.LockDirectory(path, o.FS)
	if err != nil {
		return nil, fmt.Errorf("open spool %s: %w (is another sluice using it?)", path, err)
	}
	s.lock = lock
	s.space.mu.Lock()
	s.space.checked.Store(time.Now().UnixNano())
	s.refreshSpaceLocked()
	s.space.mu.Unlock()
	if s.minFree >= 0 && s.space.full.Load() {
		// Below the reserve at start: opening for writing may have to
		// flush the WAL and write a MANIFEST, which a full disk turns
		// into a Pebble fatal error. Open read-only (no write at all) and
		// switch once there is room.
		db, err := s.openDB(true)
		if err == nil {
			s.db = db
			s.readOnly.Store(true)
			s.log.Error("spool: free space below the reserve at start; opened read-only: new mail is refused (452 4.3.1, HTTP 507) until there is room, then the spool opens for writing on its own",
				"path", path, "avail_bytes", s.space.avail.Load(), "min_free", s.minFree)
		}
		// Otherwise (no database yet): try to create it below.
	}
	if s.db == nil {
		db, err := s.openDB(false)
		if err != nil {
			lock.Close()
			if isNoSpace(err) {
				return nil, fmt.Errorf("open spool %s: the filesystem is full (free some space and start again): %w", path, err)
			}
			return nil, fmt.Errorf("open spool %s: %w", path, err)
		}
		s.db = db
		if s.minFree >= 0 && s.space.full.Load() {
			s.log.Warn("spool: full; refusing new mail (452 4.3.1) until there is room",
				"avail_bytes", s.space.avail.Load(), "min_free", s.minFree)
		}
	}
	// Resume the event sequence above every stored event, cursor and
	// prune: it never restarts, even once the outbox is drained.
	if err := s.initSeq(); err != nil {
		s.db.Close()
		lock.Close()
		return nil, fmt.Errorf("open spool %s: %w", path, err)
	}
	s.opened.Store(true)
	if s.readOnly.Load() {
		s.bg.Add(1)
		go s.waitForRoom()
	}
	if lag := cmp.Or(o.SyncLag, DefaultSyncLag); lag > 0 {
		s.bg.Add(1)
		go s.syncLagging(lag)
	}
	return s, nil
}

// openDB opens the Pebble database, read-only or for writing. A Fatalf
// during Open is an error (its goroutine stays parked).
func (s *Spool) openDB(readOnly bool) (*pebble.DB, error) {
	o := &pebble.Options{
		MemTableSize: s.memtable,
		Logger:       s.plog,
		FS:           s.fs,
		ReadOnly:     readOnly,
		Cleaner:      deleteNoRecycle{},
	}
	o.Experimental.SpanPolicyFunc = splitAtKind
	// Pebble's default of 2 stops writes whenever the mutable memtable
	// fills while the one before it is still flushing (the sum of the two
	// reaches 2 × MemTableSize): every acceptance then waits for the
	// flush, 0.1 s at 64 MiB on the project VM, seen as "write stall"
	// lines at 5,000 messages a second. 4 lets two more memtables queue
	// first (CockroachDB's setting); memory grows only while flushes fall
	// behind.
	o.MemTableStopWritesThreshold = 4
	o.EventListener = s.plog.events()
	if s.recycle {
		o.Cleaner = pebble.DeleteCleaner{} // Pebble's default: recycles WAL files
	}
	if readOnly {
		o.FS = noLockFS{s.fs} // the spool holds the lock
	} else {
		o.Lock = s.lock
		if !s.recycle && !s.noZeroAhead {
			o.FS = zeroAheadFS{FS: s.fs, log: s.log, allow: s.aboveFloor, active: &s.zeroActive}
		}
	}
	type res struct {
		db  *pebble.DB
		err error
	}
	done := make(chan res, 1)
	go func() {
		db, err := pebble.Open(s.path, o)
		done <- res{db, err}
	}()
	select {
	case r := <-done:
		return r.db, r.err
	case <-s.plog.fatal:
		return nil, errors.New(s.plog.fatalMsg())
	}
}

// deleteNoRecycle deletes obsolete files like Pebble's default cleaner,
// and turns WAL recycling off: Pebble keeps up to three obsolete WAL files
// for reuse, each as large as a memtable (64 MiB by default), which is
// where the disk space of delivered mail stayed until a restart (issue
// 14 item 7). Pebble disables recycling for a cleaner that "needs file
// contents" (an unexported method): ArchiveCleaner, embedded one level
// deeper, brings that method, and DeleteCleaner, one level up, the Clean
// and String that win.
type deleteNoRecycle struct {
	pebble.DeleteCleaner
	archiveMarker
}

type archiveMarker struct{ pebble.ArchiveCleaner }

// noLockFS opens a read-only database without taking the directory lock,
// which the spool already holds.
type noLockFS struct{ vfs.FS }

type nopCloser struct{}

func (nopCloser) Close() error { return nil }

func (noLockFS) Lock(string) (io.Closer, error) { return nopCloser{}, nil }

// roomEvery is how often a read-only spool checks for free space.
var roomEvery = 2 * time.Second

// waitForRoom runs while the spool is read-only: once the filesystem has
// the reserve free again it opens the database for writing next to the
// read-only one, switches to it (readers hold dbMu, so the switch waits
// for the running ones) and closes the read-only one. One log line a
// minute at most while it waits.
func (s *Spool) waitForRoom() {
	defer s.bg.Done()
	t := time.NewTicker(roomEvery)
	defer t.Stop()
	lastLog := time.Now()
	for {
		select {
		case <-s.closing:
			return
		case <-t.C:
		}
		s.space.mu.Lock()
		s.space.checked.Store(time.Now().UnixNano())
		s.refreshSpaceLocked()
		s.space.mu.Unlock()
		if s.space.full.Load() {
			if time.Since(lastLog) >= time.Minute {
				lastLog = time.Now()
				s.log.Warn("spool: still read-only, waiting for free space; new mail is refused", "avail_bytes", s.space.avail.Load(), "min_free", s.minFree)
			}
			continue
		}
		db, err := s.openDB(false)
		if err != nil {
			if time.Since(lastLog) >= time.Minute {
				lastLog = time.Now()
				s.log.Error("spool: cannot open for writing yet; still read-only", "err", err)
			}
			if s.plog.msg.Load() != nil {
				return // fatal: the lock is held by the parked open
			}
			continue
		}
		for !s.dbMu.TryLock() { // TryLock: readers may take dbMu twice
			time.Sleep(time.Millisecond)
		}
		old := s.db
		s.db = db
		s.gen++
		s.readOnly.Store(false)
		s.dbMu.Unlock()
		if err := old.Close(); err != nil {
			s.log.Warn("spool: closing the read-only database", "err", err)
		}
		s.log.Info("spool: opened for writing; accepting mail", "avail_bytes", s.space.avail.Load(), "min_free", s.minFree)
		return
	}
}

// syncLagging syncs the WAL every lag while writes committed without
// fsync wait (see Options.SyncLag): a process crash then loses at most
// lag of delivery outcomes, and so re-delivers at most that much beyond
// the deliveries in flight (at-least-once either way).
func (s *Spool) syncLagging(lag time.Duration) {
	defer s.bg.Done()
	t := time.NewTicker(lag)
	defer t.Stop()
	for {
		select {
		case <-s.closing:
			return
		case <-t.C:
		}
		if !s.unsynced.Swap(false) || s.readOnly.Load() {
			continue
		}
		if err := s.Sync(context.Background()); err != nil {
			s.unsynced.Store(true) // try again; the write path logs and counts failures
		}
	}
}

// ReadOnly reports whether the spool was opened read-only (free space
// below the reserve at start) and has not switched to writing yet.
func (s *Spool) ReadOnly() bool { return s.readOnly.Load() }

// Close closes the database after flushing the WAL. After a Pebble fatal
// error it only releases what it can: the parked goroutine holds the
// database.
func (s *Spool) Close() (err error) {
	close(s.closing)
	s.bg.Wait()
	s.dbMu.RLock()
	if s.plog.msg.Load() != nil {
		s.dbMu.RUnlock()
		return errors.New("spool: not closed after a storage engine fatal error: " + s.plog.fatalMsg())
	}
	if !s.readOnly.Load() {
		_ = s.write(func() error { return s.db.LogData(nil, pebble.Sync) })
	}
	s.dbMu.RUnlock()
	if p := s.fail.Load(); p != nil {
		// A stalled write may still hold the database: leave it.
		return *p
	}
	// No write may reach the database once it is closed (a consumer
	// still saving its cursor gets errClosed, not Pebble's panic): wait
	// for the writes in progress, then mark the spool closed.
	for !s.dbMu.TryLock() { // TryLock: readers may take dbMu twice
		time.Sleep(time.Millisecond)
	}
	defer s.dbMu.Unlock()
	s.closed.Store(true)
	err = s.db.Close()
	if lerr := s.lock.Close(); err == nil {
		err = lerr
	}
	return err
}

// NewID returns a new ULID: unique, lexically sortable by time. Safe for
// concurrent use: the lock covers the monotonic entropy's few steps, not
// the encoding.
func (s *Spool) NewID() string {
	now := ulid.Now()
	s.entropyMu.Lock()
	id := ulid.MustNew(now, s.entropy)
	s.entropyMu.Unlock()
	return id.String()
}

// newEntropy is the ULIDs' random source: ChaCha8, a CSPRNG, seeded from
// crypto/rand, so that each new millisecond's entropy is not a getrandom
// system call made under entropyMu (a lock every acceptance takes).
func newEntropy() io.Reader {
	var seed [32]byte
	rand.Read(seed[:]) // never fails (crypto/rand, Go 1.24+)
	return mrand.NewChaCha8(seed)
}

func metaKey(id string) []byte { return append([]byte{kMeta}, id...) }
func bodyKey(id string) []byte { return append([]byte{kBody}, id...) }
func rcptKey(id string, idx int) []byte {
	k := make([]byte, 0, 1+len(id)+2)
	k = append(k, kRcpt)
	k = append(k, id...)
	return binary.BigEndian.AppendUint16(k, uint16(idx))
}
func eventKey(seq uint64) []byte { return binary.BigEndian.AppendUint64([]byte{kEvent}, seq) }

// historyKey orders a message's events by event id: ULIDs sort by time and
// never repeat across restarts (event ids are what consumers see; the
// outbox seq is the spool's own).
func historyKey(id, eventID string) []byte {
	k := make([]byte, 0, 1+len(id)+len(eventID))
	k = append(k, kHistory)
	k = append(k, id...)
	return append(k, eventID...)
}

// Batch collects writes that commit atomically. Not safe for concurrent use.
type Batch struct {
	s       *Spool
	b       *pebble.Batch
	events  []*pipeline.Event
	deleted int64 // messages deleted
	// noSuppress: bounces here do not join the suppression list (control.go).
	noSuppress bool
	gen        int // the spool's db generation at NewBatch
}

// NewBatch starts a batch.
func (s *Spool) NewBatch() *Batch {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	return &Batch{s: s, b: s.db.NewBatch(), gen: s.gen}
}

// PutMessage stores a message's metadata and bytes.
func (b *Batch) PutMessage(m *Meta, data []byte) error { return b.PutMessageParts(m, data) }

// PutMessageParts is PutMessage for a message in parts (its header
// section and its body): they are copied into the batch once, with no
// copy of the whole message in between.
func (b *Batch) PutMessageParts(m *Meta, parts ...[]byte) error {
	v, err := json.Marshal(m)
	if err != nil {
		return err
	}
	_ = b.b.Set(metaKey(m.ID), v, nil)
	key := bodyKey(m.ID)
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	op := b.b.SetDeferred(len(key), n)
	copy(op.Key, key)
	v = op.Value[:0]
	for _, p := range parts {
		v = append(v, p...)
	}
	return op.Finish()
}

// PutRecipient stores (or replaces) a queued recipient.
func (b *Batch) PutRecipient(r *Recipient) error {
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return b.b.Set(rcptKey(r.MsgID, r.Idx), v, nil)
}

// DeleteRecipient removes a recipient that reached a final state.
func (b *Batch) DeleteRecipient(msgID string, idx int) {
	_ = b.b.Delete(rcptKey(msgID, idx), nil)
}

// DeleteMessage removes a message's metadata and bytes (call it once no
// recipient is left).
func (b *Batch) DeleteMessage(msgID string) {
	b.deleted++
	_ = b.b.Delete(metaKey(msgID), nil)
	_ = b.b.Delete(bodyKey(msgID), nil)
}

// AddEvent appends ev to the outbox and the message's history. Schema,
// EventID, Time and Node are filled when empty.
func (b *Batch) AddEvent(ev *pipeline.Event) {
	b.events = append(b.events, ev)
}

// Merge appends o's writes and events to b and closes o. Stage one
// message in its own batch and merge it only when it is complete, so a
// failure half-way never leaves part of a message in a shared batch.
func (b *Batch) Merge(o *Batch) error {
	if err := b.b.Apply(o.b, nil); err != nil {
		return err
	}
	b.events = append(b.events, o.events...)
	b.deleted += o.deleted
	o.b.Close()
	return nil
}

// Discard drops a batch that will not be committed.
func (b *Batch) Discard() { b.b.Close() }

// Empty reports whether the batch holds nothing.
func (b *Batch) Empty() bool { return b.b.Empty() && len(b.events) == 0 }

// Commits returns how many batches Batch.Commit wrote since Open: each is
// a Pebble commit (a WAL record; a synced one also an fdatasync unless it
// shares one). Safe for concurrent use.
func (s *Spool) Commits() uint64 { return s.commits.Load() }

// Commit writes the batch; with sync it returns after an fsync shared with
// concurrent committers. The batch cannot be reused.
func (b *Batch) Commit(sync bool) error {
	b.suppressBounces() // hard bounces join the suppression list atomically (suppression.go)
	s := b.s
	var first uint64
	n := uint64(len(b.events))
	if n > 0 {
		s.seqMu.Lock()
		first = s.nextSeq
		s.nextSeq += n
		for i := uint64(0); i < n; i++ {
			s.inflight[first+i] = struct{}{}
		}
		s.seqMu.Unlock()
		now := time.Now().UTC()
		for i, ev := range b.events {
			seq := first + uint64(i)
			if ev.Schema == 0 {
				ev.Schema = pipeline.EventSchema
			}
			if ev.EventID == "" {
				ev.EventID = s.NewID()
			}
			if ev.Time.IsZero() {
				ev.Time = now
			}
			if ev.Node == "" {
				ev.Node = s.node
			}
			if ev.Tags == nil {
				ev.Tags = []string{}
			}
			if ev.Metadata == nil {
				ev.Metadata = map[string]string{}
			}
			v, err := json.Marshal(ev)
			if err != nil {
				s.release(first, n)
				b.b.Close()
				return err
			}
			setOutboxEvent(b.b, seq, ev, v)
			if ev.MessageID != "" {
				_ = b.b.Set(historyKey(ev.MessageID, ev.EventID), v, nil)
			}
		}
	}
	opts := pebble.NoSync
	if sync {
		opts = pebble.Sync
	}
	s.dbMu.RLock()
	if b.gen != s.gen {
		// Staged on the read-only database before the switch.
		nb := s.db.NewBatch()
		_ = nb.Apply(b.b, nil)
		b.b.Close()
		b.b = nb
	}
	err := s.apply(b.b, opts) // closes b.b
	s.dbMu.RUnlock()
	if err == nil {
		s.commits.Add(1)
		if b.deleted > 0 {
			s.deleted.Add(b.deleted)
		}
	}
	if n > 0 {
		s.release(first, n)
		select {
		case s.notify <- struct{}{}:
		default:
		}
	}
	if err != nil {
		return fmt.Errorf("spool commit: %w", err)
	}
	return nil
}

func (s *Spool) release(first, n uint64) {
	s.seqMu.Lock()
	for i := uint64(0); i < n; i++ {
		delete(s.inflight, first+i)
	}
	s.seqMu.Unlock()
}

// safeSeq returns the lowest event seq that may still be committing: every
// event below it is either committed or never will be.
// OutboxHead returns the seq below which every event is committed (or
// never will be): a consumer that wants none of the events up to now can
// move its cursor there without reading them.
func (s *Spool) OutboxHead() uint64 { return s.safeSeq() }

func (s *Spool) safeSeq() uint64 {
	s.seqMu.Lock()
	defer s.seqMu.Unlock()
	min := s.nextSeq
	for q := range s.inflight {
		if q < min {
			min = q
		}
	}
	return min
}

// Body returns a copy of a message's bytes.
func (s *Spool) Body(msgID string) ([]byte, error) {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	v, c, err := s.db.Get(bodyKey(msgID))
	if err != nil {
		if errors.Is(err, pebble.ErrNotFound) {
			return nil, fmt.Errorf("message %s: body not in spool", msgID)
		}
		return nil, err
	}
	out := bytes.Clone(v)
	c.Close()
	return out, nil
}

// Meta returns a message's metadata (pebble.ErrNotFound if it is not in
// the spool).
func (s *Spool) Meta(msgID string) (*Meta, error) {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	return metaOf(s.db, msgID)
}

// ScanRecipients calls fn for every queued recipient with its message's
// metadata, in message order. Used once at start to rebuild the queues.
//
// It reads the metadata beside the recipients with a second iterator
// (one forward pass over each key range, not a point read per message),
// and the values it hands out share memory where they are equal: a
// message's recipients share its id string, and equal routes, last
// replies, recipient domains and senders are one value each (see
// interner). The callback must not modify a recipient's Route or
// LastReply in place (replace the pointer instead).
func (s *Spool) ScanRecipients(fn func(m *Meta, r *Recipient) error) error {
	return s.scanRecipients(false, fn)
}

// scanRecipients is ScanRecipients, or ScanQueued when brief.
func (s *Spool) scanRecipients(brief bool, fn func(m *Meta, r *Recipient) error) error {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	mit, it, closeIters, err := s.queueIters()
	if err != nil {
		return err
	}
	defer closeIters()
	in := newInterner()
	var (
		cur     *Meta
		skipped []byte // the id of a message whose metadata is missing or corrupt
	)
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) < 4 {
			continue
		}
		idb := k[1 : len(k)-2]
		idx := int(binary.BigEndian.Uint16(k[len(k)-2:]))
		if skipped != nil && bytes.Equal(idb, skipped) {
			continue
		}
		if cur == nil || cur.ID != string(idb) {
			var m *Meta
			if brief {
				m, err = briefMetaAt(mit, string(idb), in)
			} else {
				m, err = metaAt(mit, string(idb))
			}
			if errors.Is(err, pebble.ErrNotFound) {
				err = errors.New("no metadata in the spool") // not Pebble's stack trace
			}
			if err != nil {
				s.log.Error("spool: recipient without message metadata; skipping", "msgid", string(idb), "err", err)
				skipped = append(skipped[:0], idb...)
				continue
			}
			if m.ID != string(idb) {
				// Metadata naming another id: the key wins (the queue finds
				// the message's body and recipients by it).
				s.log.Warn("spool: message metadata names another id; using its key's", "msgid", string(idb), "meta_id", m.ID)
				m.ID = string(idb)
			}
			in.meta(m)
			cur, skipped = m, nil
		}
		var r Recipient
		if brief {
			err = in.briefRecipient(it.Value(), &r)
		} else {
			err = json.Unmarshal(it.Value(), &r)
		}
		if err != nil {
			s.log.Error("spool: corrupt recipient record; skipping", "msgid", cur.ID, "idx", idx, "err", err)
			continue
		}
		r.MsgID, r.Idx = cur.ID, idx
		in.recipient(&r)
		if err := fn(cur, &r); err != nil {
			return err
		}
	}
	if err := mit.Error(); err != nil {
		return err
	}
	return it.Error()
}

// History returns the stored events of a message, oldest first.
func (s *Spool) History(msgID string) ([]pipeline.Event, error) {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	return historyOf(s.db, msgID)
}

// OutboxEvent is an event read from the outbox: its sequence number, its
// type and message id (read without decoding JSON) and its JSON object.
// The event is the caller's; JSON must not be appended to in place.
type OutboxEvent struct {
	Seq       uint64
	Type      string
	MessageID string
	JSON      []byte
}

// ReadOutbox makes sure everything it returns is durable (syncing the WAL
// unless an earlier read already did for these seqs), then returns up to
// limit events with seq >= from that are safe to publish in order: no
// event below the last one returned can still be committing. Safe for
// concurrent use by several readers.
func (s *Spool) ReadOutbox(from uint64, limit int) ([]OutboxEvent, error) {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	hi := s.safeSeq()
	if hi <= from || limit <= 0 {
		return nil, nil
	}
	if s.syncedBelow.Load() < hi && !s.readOnly.Load() { // read-only: all was on disk at open
		if err := s.write(func() error { return s.db.LogData(nil, pebble.Sync) }); err != nil {
			return nil, err
		}
		for {
			old := s.syncedBelow.Load()
			if old >= hi || s.syncedBelow.CompareAndSwap(old, hi) {
				break
			}
		}
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: eventKey(from), UpperBound: eventKey(hi)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	out := make([]OutboxEvent, 0, min(uint64(limit), hi-from))
	// One allocation for many events' JSON, one string for their ids.
	var arena, ids []byte
	var idEnds []int
	for it.First(); it.Valid() && len(out) < limit; it.Next() {
		seq := binary.BigEndian.Uint64(it.Key()[1:])
		typ, id, js, err := splitOutboxValue(it.Value())
		if err != nil {
			return nil, fmt.Errorf("outbox event %d: %w", seq, err)
		}
		if cap(arena)-len(arena) < len(js) {
			arena = make([]byte, 0, max(64<<10, len(js)))
		}
		n := len(arena)
		arena = append(arena, js...)
		ids = append(ids, id...)
		idEnds = append(idEnds, len(ids))
		out = append(out, OutboxEvent{Seq: seq, Type: internType(typ), JSON: arena[n:len(arena):len(arena)]})
	}
	if err := it.Error(); err != nil {
		return nil, err
	}
	idStr, start := string(ids), 0
	for i, end := range idEnds {
		out[i].MessageID = idStr[start:end]
		start = end
	}
	return out, nil
}

// FirstOutboxSeq returns the seq of the oldest event still in the outbox,
// or the next seq to be assigned when the outbox is empty.
func (s *Spool) FirstOutboxSeq() (uint64, error) {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	s.pruneMu.Lock()
	low := s.outboxLow
	s.pruneMu.Unlock()
	// The safe sequence is read before the iterator is opened: events
	// committed after the iterator's snapshot then have a sequence at
	// least this one. Read after, it could pass events committed in
	// between, and a new consumer would start past them.
	safe := s.safeSeq()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: eventKey(low), UpperBound: []byte{kEvent + 1}})
	if err != nil {
		return 0, err
	}
	defer it.Close()
	if it.First() {
		return binary.BigEndian.Uint64(it.Key()[1:]), nil
	}
	return safe, it.Error()
}

// AckOutbox deletes exported events. It writes point deletions, not a
// range tombstone: one tombstone per small export batch makes every
// iterator fragment thousands of ranges (it dominated the CPU profile at
// one session). Readers start at their cursor, so they skip the deleted
// keys without scanning them.
func (s *Spool) AckOutbox(evs []OutboxEvent) error {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	if len(evs) == 0 {
		return nil
	}
	b := s.db.NewBatch()
	var top uint64
	for _, e := range evs {
		_ = b.Delete(eventKey(e.Seq), nil)
		top = max(top, e.Seq+1)
	}
	s.pruneMu.Lock()
	defer s.pruneMu.Unlock()
	s.raiseFloorLocked(b, top)
	return s.apply(b, pebble.NoSync)
}

// OutboxNotify is signalled (without blocking) after each commit that
// added events; readers select on it with a fallback timer.
func (s *Spool) OutboxNotify() <-chan struct{} { return s.notify }

// Sync makes every earlier write durable.
func (s *Spool) Sync(ctx context.Context) error {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	return s.write(func() error { return s.db.LogData(nil, pebble.Sync) })
}

// PruneHistory deletes the event history of messages received before t.
// Message ids are ULIDs, which sort by time, so this is one range
// tombstone.
func (s *Spool) PruneHistory(t time.Time) error {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	var zero ulid.ULID
	if err := zero.SetTime(ulid.Timestamp(t)); err != nil {
		return err
	}
	return s.write(func() error {
		return s.db.DeleteRange([]byte{kHistory}, append([]byte{kHistory}, zero.String()...), pebble.NoSync)
	})
}

const kIdem = 'i'

type idemRecord struct {
	Expires time.Time       `json:"exp"`
	Value   json.RawMessage `json:"v"`
}

func idemKey(key string) []byte { return append([]byte{kIdem}, key...) }

// PutIdempotency stores value (JSON) under key until expires, in the same
// atomic batch as the message it answers for.
func (b *Batch) PutIdempotency(key string, value []byte, expires time.Time) error {
	v, err := json.Marshal(idemRecord{Expires: expires, Value: value})
	if err != nil {
		return err
	}
	return b.b.Set(idemKey(key), v, nil)
}

// GetIdempotency returns the stored value for key, if present and not
// expired.
func (s *Spool) GetIdempotency(key string, now time.Time) ([]byte, bool, error) {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	v, c, err := s.db.Get(idemKey(key))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	defer c.Close()
	var rec idemRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return nil, false, fmt.Errorf("idempotency record %q: %w", key, err)
	}
	if !now.Before(rec.Expires) {
		return nil, false, nil
	}
	return bytes.Clone(rec.Value), true, nil
}

// PruneIdempotency deletes expired idempotency records (a scan of all of
// them; run it rarely, e.g. hourly).
func (s *Spool) PruneIdempotency(now time.Time) (int, error) {
	return s.pruneRange([]byte{kIdem}, []byte{kIdem + 1}, func(v []byte) bool {
		var rec idemRecord
		return json.Unmarshal(v, &rec) != nil || !now.Before(rec.Expires)
	})
}

// CollectOrphans deletes messages that have no recipient left: what a
// crash between a message's last outcome and its deletion leaves behind.
// Run it at start, before the queues take new work. A read-only spool
// (see Open) collects nothing.
func (s *Spool) CollectOrphans() (int, error) {
	if s.readOnly.Load() {
		return 0, nil // left for the next start
	}
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	it, rit, closeIters, err := s.queueIters()
	if err != nil {
		return 0, err
	}
	defer closeIters()
	b := s.NewBatch()
	n := 0
	for it.First(); it.Valid(); it.Next() {
		id := string(it.Key()[1:])
		prefix := append([]byte{kRcpt}, id...)
		if rit.SeekGE(prefix) && bytes.HasPrefix(rit.Key(), prefix) && len(rit.Key()) == len(prefix)+2 {
			continue
		}
		b.DeleteMessage(id)
		n++
	}
	if err := it.Error(); err != nil {
		b.Discard()
		return 0, err
	}
	if n == 0 {
		b.Discard()
		return 0, nil
	}
	return n, b.Commit(true)
}

// ErrNotQueued is returned by Queued for a message whose metadata, or
// one of whose recipients, is not in the spool.
var ErrNotQueued = errors.New("spool: not queued")

// Queued reads back a queued message's metadata and the recipients
// with the given indexes, in that order: the queue keeps only those
// indexes in memory for recipients waiting for their next attempt (issue
// 21: a million queued) and reads the rest here when they become due.
// One point read for the metadata and one per recipient. The error wraps
// ErrNotQueued when a record is missing (the caller drops those
// recipients: nothing can deliver them), or is a read or decoding
// failure. Safe for concurrent use.
func (s *Spool) Queued(msgID string, idxs []uint16) (*Meta, []*Recipient, error) {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	return queued(pointReader{s.db}, msgID, idxs)
}

// queuedReader reads the records Queued needs: point reads (pointReader)
// or seeks of iterators over the key ranges (iterReader, for QueuedMany).
// value returns pebble.ErrNotFound for a missing key.
type queuedReader interface {
	meta(msgID string) (*Meta, error)
	value(k []byte) ([]byte, io.Closer, error)
}

type pointReader struct{ db *pebble.DB }

func (r pointReader) meta(msgID string) (*Meta, error)          { return metaOf(r.db, msgID) }
func (r pointReader) value(k []byte) ([]byte, io.Closer, error) { return r.db.Get(k) }

type iterReader struct{ mit, rit *pebble.Iterator }

func (r *iterReader) meta(msgID string) (*Meta, error) { return metaAt(r.mit, msgID) }
func (r *iterReader) value(k []byte) ([]byte, io.Closer, error) {
	v, err := valueAt(r.rit, k)
	if err != nil {
		return nil, nil, err
	}
	return v, nopCloser{}, nil
}

// queued is Queued through rd.
func queued(rd queuedReader, msgID string, idxs []uint16) (*Meta, []*Recipient, error) {
	m, err := rd.meta(msgID)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil, fmt.Errorf("message %s: no metadata: %w", msgID, ErrNotQueued)
	}
	if err != nil {
		return nil, nil, err
	}
	rs := make([]*Recipient, len(idxs))
	for i, idx := range idxs {
		v, c, err := rd.value(rcptKey(msgID, int(idx)))
		if errors.Is(err, pebble.ErrNotFound) {
			return nil, nil, fmt.Errorf("message %s: no recipient %d: %w", msgID, idx, ErrNotQueued)
		}
		if err != nil {
			return nil, nil, err
		}
		r, err := queuedRecipient(v, msgID, idx)
		c.Close()
		if err != nil {
			return nil, nil, err
		}
		rs[i] = r
	}
	return m, rs, nil
}

// QueuedMany is Queued for many messages at once: ids[i] with the
// recipient indexes idxs[i]. ids must be in ascending order (the spool's
// key order); they are read with one forward iterator per key range, in
// chunks, which costs far less than a point read each. fn gets each
// message's result in order, with the errors Queued returns. Safe for
// concurrent use; writers are not held back for more than a chunk.
func (s *Spool) QueuedMany(ids []string, idxs [][]uint16, fn func(i int, m *Meta, rs []*Recipient, err error)) error {
	const chunk = 512
	for lo := 0; lo < len(ids); lo += chunk {
		if err := s.queuedChunk(ids, idxs, lo, min(lo+chunk, len(ids)), fn); err != nil {
			return err
		}
	}
	return nil
}

func (s *Spool) queuedChunk(ids []string, idxs [][]uint16, lo, hi int, fn func(int, *Meta, []*Recipient, error)) error {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	mit, rit, closeIters, err := s.queueIters()
	if err != nil {
		return err
	}
	defer closeIters()
	rd := &iterReader{mit, rit}
	for i := lo; i < hi; i++ {
		m, rs, err := queued(rd, ids[i], idxs[i])
		fn(i, m, rs, err)
	}
	return nil
}

// queueIters opens iterators over the metadata and the recipient key
// ranges; s.dbMu read-held.
func (s *Spool) queueIters() (mit, rit *pebble.Iterator, closeIters func(), err error) {
	mit, err = s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{kMeta}, UpperBound: []byte{kMeta + 1}})
	if err != nil {
		return nil, nil, nil, err
	}
	rit, err = s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{kRcpt}, UpperBound: []byte{kRcpt + 1}})
	if err != nil {
		mit.Close()
		return nil, nil, nil, err
	}
	return mit, rit, func() { mit.Close(); rit.Close() }, nil
}

// queuedRecipient decodes recipient idx of msgID, stored as v.
func queuedRecipient(v []byte, msgID string, idx uint16) (*Recipient, error) {
	r := new(Recipient)
	if err := json.Unmarshal(v, r); err != nil {
		return nil, fmt.Errorf("message %s: corrupt recipient %d: %w", msgID, idx, err)
	}
	r.MsgID, r.Idx = msgID, int(idx)
	return r, nil
}

// splitAtKind is the spool's Pebble SpanPolicyFunc: it ends every flush
// and compaction output table at a key-kind boundary (the key's first
// byte: kBody, kMeta, kHistory, ...), so no sstable holds two kinds.
//
// Why: Pebble picks the L6 tables a compaction rewrites by the key range
// of its L0 input. A flush holds new bodies, tombstones of delivered
// messages, outbox events and history entries at once; as one table its
// range spans every kind in between, and merging it rewrote every L6
// table there, the whole message history (18 MB after 120,000 messages)
// each time: 0.2 s (wall time) per flush, growing with the history, and
// the relay's HTTP p99 with it (BENCHMARKS.md "Issue 21: what grows with
// the spool's history"). Split per kind, new keys of each kind land at
// its end (IDs and sequence numbers grow with time), so a compaction
// rewrites a table or two at the tail of each kind, or only moves one.
// Not so where keys do not grow with time: idempotency records are keyed
// by the client's key and kept 24 h, so each flush's table of them spans
// the whole kind and merging it rewrites all of them (3 MB of records
// from 30 flushes cost 25 MB of compaction writes in a review
// experiment); a message deferred for hours adds history inside the
// history, not at its tail.
//
// The policy itself is the default one; only the boundary matters.
func splitAtKind(start []byte) (pebble.SpanPolicy, []byte, error) {
	if len(start) == 0 || start[0] == 0xff {
		return pebble.SpanPolicy{}, nil, nil
	}
	return pebble.SpanPolicy{}, []byte{start[0] + 1}, nil
}
