package spool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/sluice-mta/sluice/internal/logx"
	"github.com/sluice-mta/sluice/pipeline"
)

// A full disk must never crash the relay. Three defences:
//
//   - A free-space reserve (Options.MinFree), checked before acceptance
//     (CheckSpace, one statfs per second at most): new mail is refused
//     with 452 4.3.1 while the filesystem has less free space than the
//     reserve, so Pebble itself should never meet ENOSPC. Delivery
//     outcomes, the event outbox and housekeeping do not check it: they
//     write little and free space.
//   - A write floor, a quarter of the reserve: below it every spool
//     write (delivery outcomes and events too) is refused before it
//     reaches Pebble, so that when another process eats the reserve
//     Pebble does not meet ENOSPC on its WAL (a fatal error, below). The
//     queue retries its outcomes; the spool writes again once there is
//     room, without a restart.
//   - Every write goes through Spool.write, which turns an error into a
//     returned error, and Pebble's Fatalf into an error too (see
//     pebbleLogger.Fatalf: the goroutine that called it is parked, never
//     exits the process). After a Fatalf Pebble's state cannot be trusted:
//     the spool is "failed", every later write returns that error at
//     once, and acceptance answers 452 until the node is restarted (the
//     parked goroutine holds the database and its directory lock, so it
//     cannot be reopened in the same process).
//   - A write that does not finish within the write timeout stalls the
//     spool (452 at once for every write) until a probe write succeeds
//     again (recoverWrites): no restart needed.
//   - Below the reserve at start the spool opens read-only (Pebble writes
//     nothing then) and switches to writing on its own once the reserve is
//     free (waitForRoom): the node starts and answers 452 4.3.1 / 507 on
//     a full disk instead of failing to start.
//   - Pebble's error lines are rate-limited (one per message text per
//     10 s) so a full disk does not flood the log.

// fullError is a write refused or failed for lack of space: it is
// pipeline.ErrSpoolFull (452 4.3.1) and its cause.
type fullError struct{ cause error }

func (e *fullError) Error() string {
	if e.cause == nil {
		return "spool: free space below the reserve"
	}
	return "spool: no space: " + e.cause.Error()
}
func (e *fullError) Unwrap() []error {
	if e.cause == nil {
		return []error{pipeline.ErrSpoolFull}
	}
	return []error{pipeline.ErrSpoolFull, e.cause}
}

// ErrFull is what CheckSpace returns while the spool's filesystem has less
// free space than the reserve. errors.Is(err, pipeline.ErrSpoolFull) holds
// for it and for a write that failed with ENOSPC.
var ErrFull error = &fullError{}

func isNoSpace(err error) bool {
	return err != nil && (errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) ||
		strings.Contains(err.Error(), "no space left on device"))
}

// DefaultMinFree is the free-space reserve when Options.MinFree is 0.
const DefaultMinFree = 100 << 20

type spaceState struct {
	mu      sync.Mutex   // held by the one reading the free space
	checked atomic.Int64 // when it was last read, Unix nanoseconds
	full    atomic.Bool
	floor   atomic.Bool // below the write floor (a quarter of the reserve)
	avail   atomic.Uint64
	statErr bool // a statfs error was logged
	// written counts the bytes of spool writes since the last reading of
	// the free space: past recheckBytes the next check reads it again
	// instead of waiting out the second, so a burst of acceptances cannot
	// walk through the reserve between two readings.
	written atomic.Int64
}

// recheckBytes is how many bytes may be written between two readings of
// the free space: a sixteenth of the reserve, at least 256 KiB.
func (s *Spool) recheckBytes() int64 { return max(s.minFree/16, 256<<10) }

// failedErr is set once Pebble reported a fatal error (fatal) or a write
// did not finish within the write timeout (not fatal: cleared once a write
// succeeds again, see recoverWrites).
type failedErr struct {
	msg   string
	fatal bool
}

func (e *failedErr) Error() string {
	if e.fatal {
		return "spool failed (restart the node once the cause is fixed): " + e.msg
	}
	return "spool writes stalled (they resume on their own once the disk answers again): " + e.msg
}
func (e *failedErr) Unwrap() error { return pipeline.ErrSpoolFull }

func (s *Spool) failed() error {
	if p := s.fail.Load(); p != nil {
		return *p
	}
	return nil
}

// markFailed stops spool writes: a fatal failure for good (until a
// restart), a stall (write timeout) until recoverWrites sees a write
// succeed again.
func (s *Spool) markFailed(msg string, fatal bool) {
	var err error = &failedErr{msg: msg, fatal: fatal}
	if fatal {
		if old := s.fail.Swap(&err); old == nil || !(*old).(*failedErr).fatal {
			s.log.Error("spool: storage engine failed; refusing new mail (452 4.3.1) and spool writes until the node is restarted", "err", msg)
		}
		return
	}
	if s.fail.CompareAndSwap(nil, &err) {
		s.log.Error("spool: writes stalled; refusing new mail (452 4.3.1) until a write succeeds again", "err", msg)
	}
}

// errClosed is what a write after Close returns.
var errClosed = errors.New("spool: closed")

// write runs one write to Pebble: an error comes back as an error (452
// 4.3.1 when it is ENOSPC), and Pebble's Fatalf as an error too (the
// goroutine that called Fatalf is parked, see pebbleLogger.Fatalf). A
// write that does not finish within the spool's write timeout (a full or
// failing disk: Pebble then retries its flush without end and every
// commit waits) stalls the spool: this write and every later one return
// an error at once (acceptance answers 452 4.3.1) instead of hanging the
// callers, until recoverWrites sees the stuck write finish and a synced
// write succeed. The caller holds dbMu (read) and the spool is writable.
func (s *Spool) write(f func() error) error {
	if s.closed.Load() {
		return errClosed
	}
	if err := s.failed(); err != nil {
		return err
	}
	if s.readOnly.Load() {
		return &fullError{cause: errReadOnly}
	}
	if s.minFree > 0 {
		s.refreshSpace()
		if s.space.floor.Load() {
			return &fullError{cause: errFloor}
		}
	}
	r := s.startWrite(f) // on a writer goroutine (writers.go)
	var timeout <-chan time.Time
	if s.writeTimeout > 0 {
		t := time.NewTimer(s.writeTimeout)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case err := <-r.done:
		endWrite(r)
		return err
	case <-s.plog.fatal:
		return s.fatalErr()
	case <-timeout:
		s.markFailed(fmt.Sprintf("a write did not finish within %s (is the disk full or failing?)", s.writeTimeout), false)
		go s.recoverWrites(r.done)
		return &fullError{cause: s.failed()}
	}
}

// errFloor: the filesystem is below the write floor.
var errFloor = errors.New("the filesystem is almost full (free space below a quarter of the reserve): spool writes are refused until there is room")

// errReadOnly: the spool was opened read-only on a full filesystem.
var errReadOnly = errors.New("the spool is read-only until its filesystem has room (free space below the reserve at start)")

func (s *Spool) fatalErr() error {
	err := s.failed()
	if isNoSpace(errors.New(s.plog.fatalMsg())) {
		s.setFull(true, "write failed: no space left on device")
		return &fullError{cause: err}
	}
	return err
}

// recoverWrites runs after a write timed out: once the stuck write has
// returned (Pebble got past whatever blocked it) it probes with a synced
// empty write every recoverEvery, and clears the stall when one succeeds.
// Only one runs at a time; a fatal error ends it.
func (s *Spool) recoverWrites(stuck <-chan error) {
	if !s.recovering.CompareAndSwap(false, true) {
		return
	}
	defer s.recovering.Store(false)
	select {
	case <-stuck:
	case <-s.plog.fatal:
		return
	case <-s.closing:
		return
	}
	for {
		p := s.fail.Load()
		if p == nil {
			return
		}
		if (*p).(*failedErr).fatal {
			return
		}
		done := make(chan error, 1)
		go func() { done <- s.writeNow(func() error { return s.db.LogData(nil, pebble.Sync) }) }()
		t := time.NewTimer(s.writeTimeout)
		select {
		case err := <-done:
			t.Stop()
			if err == nil {
				if s.fail.CompareAndSwap(p, nil) {
					s.log.Info("spool: writes succeed again; accepting mail")
				}
				return
			}
		case <-t.C:
			<-done // still stuck: wait for it before the next probe
		case <-s.plog.fatal:
			t.Stop()
			return
		case <-s.closing:
			t.Stop()
			return
		}
		select {
		case <-time.After(recoverEvery):
		case <-s.closing:
			return
		}
	}
}

// recoverEvery is the pause between two write probes of recoverWrites.
var recoverEvery = 5 * time.Second

// apply writes b through write and closes b once Pebble is done with it:
// after a write timeout the stuck Apply still holds b, so the caller must
// never close it (apply owns b from the call on).
func (s *Spool) apply(b *pebble.Batch, opts *pebble.WriteOptions) error {
	if err := s.failed(); err != nil {
		b.Close()
		return err
	}
	if s.readOnly.Load() {
		b.Close()
		return &fullError{cause: errReadOnly}
	}
	s.space.written.Add(int64(b.Len()))
	err := s.write(func() error {
		defer b.Close()
		return s.db.Apply(b, opts)
	})
	if err == nil && !opts.Sync && !s.unsynced.Load() {
		s.unsynced.Store(true) // syncLagging syncs it within Options.SyncLag
	}
	return err
}

func (s *Spool) writeNow(f func() error) error {
	err := f()
	if isNoSpace(err) {
		s.setFull(true, "write failed: no space left on device")
		return &fullError{cause: err}
	}
	return err
}

// CheckSpace returns ErrFull (452 4.3.1) while the filesystem of the spool
// has less free space than the reserve, or the spool failed; nil
// otherwise. It costs a statfs at most once a second, or once per
// sixteenth of the reserve written (so a burst cannot pass the reserve
// between two readings); call it before accepting a message.
func (s *Spool) CheckSpace() error {
	if err := s.failed(); err != nil {
		return err
	}
	if s.readOnly.Load() {
		return &fullError{cause: errReadOnly}
	}
	if s.minFree < 0 {
		return nil
	}
	s.refreshSpace()
	if s.space.full.Load() {
		return ErrFull
	}
	return nil
}

// refreshSpace reads the free space if the last reading is a second old,
// or recheckBytes were written since. Only one caller reads it (a
// statfs): the others go on with the last reading instead of queueing
// behind it on every acceptance (a convoy the HTTP benchmark's trace
// showed at saturation, BENCHMARKS.md "Issue 21: HTTP tail latency"),
// unless recheckBytes more were written while that reading runs (a slow
// statfs): they then wait for it, so a burst cannot walk through the
// reserve behind a slow reading (TestSlowSpaceReadingBoundsBurst).
func (s *Spool) refreshSpace() {
	if !s.spaceDue(time.Now()) {
		return
	}
	if !s.space.mu.TryLock() {
		// The reader reset written as it started: what it counts now was
		// written during the reading.
		if s.space.written.Load() < s.recheckBytes() {
			return
		}
		s.space.mu.Lock()
	}
	if now := time.Now(); s.spaceDue(now) { // not read while we took the lock
		s.space.checked.Store(now.UnixNano())
		s.space.written.Store(0)
		s.refreshSpaceLocked()
	}
	s.space.mu.Unlock()
}

// spaceDue reports whether the free space must be read again at now.
func (s *Spool) spaceDue(now time.Time) bool {
	return now.UnixNano()-s.space.checked.Load() >= int64(time.Second) || s.space.written.Load() >= s.recheckBytes()
}

func (s *Spool) refreshSpaceLocked() {
	du, err := s.fs.GetDiskUsage(s.path)
	if err != nil {
		if !s.space.statErr {
			s.space.statErr = true
			s.log.Warn("spool: cannot read free space; the reserve is not enforced", "path", s.path, "err", err)
		}
		s.setFull(false, "")
		return
	}
	s.space.avail.Store(du.AvailBytes)
	if s.minFree <= 0 { // no reserve: neither full nor below a floor
		return
	}
	min := uint64(s.minFree)
	below := du.AvailBytes < min/4
	if s.space.floor.Swap(below) != below && s.opened.Load() {
		if below {
			s.log.Error("spool: filesystem almost full; refusing every spool write (delivery outcomes and events too) until there is room, so the storage engine never meets ENOSPC",
				"avail_bytes", du.AvailBytes, "floor_bytes", min/4)
		} else {
			s.log.Info("spool: filesystem above the write floor again; spool writes resume", "avail_bytes", du.AvailBytes)
		}
	}
	if s.space.full.Load() {
		// Leave the full state with a margin, so it does not flap.
		if du.AvailBytes >= min+min/10 {
			s.setFull(false, "")
		}
	} else if du.AvailBytes < min {
		s.setFull(true, "free space below the reserve")
	}
}

func (s *Spool) setFull(full bool, why string) {
	if s.space.full.Swap(full) == full || !s.opened.Load() { // Open logs its own line
		return
	}
	if full {
		s.log.Warn("spool: full; refusing new mail (452 4.3.1) until there is room; delivery continues",
			"reason", why, "avail_bytes", s.space.avail.Load(), "min_free", s.minFree)
		return
	}
	s.log.Info("spool: space available again; accepting mail", "avail_bytes", s.space.avail.Load(), "min_free", s.minFree)
}

// Full reports whether the spool refuses new mail for lack of space, or
// because it is read-only or failed: for a metric (a gauge, 1 when true).
// Safe for concurrent use.
func (s *Spool) Full() bool {
	return s.space.full.Load() || s.readOnly.Load() || s.failed() != nil
}

// Writable reports whether a spool write can succeed now: not read-only,
// not failed or stalled, and above the write floor. A delivery attempt
// whose outcome cannot be recorded is made again later (a duplicate), so
// a caller may hold attempts while it is false. It reads the free space
// again when the last reading is a second old (a statfs at most once a
// second). Safe for concurrent use.
func (s *Spool) Writable() bool {
	if s.readOnly.Load() || s.failed() != nil {
		return false
	}
	if s.minFree <= 0 { // no reserve, so no write floor either
		return true
	}
	s.refreshSpace()
	return !s.space.floor.Load()
}

// Size returns the bytes the spool's database uses on disk (tables, WAL,
// manifests, obsolete files not yet deleted), from Pebble's metrics
// without touching the disk: for a gauge metric. Safe for concurrent use.
// After a Pebble fatal error it returns the last figure it read: the
// parked goroutine may hold the mutex Pebble's metrics need.
func (s *Spool) Size() uint64 {
	m := s.metrics()
	if m == nil {
		return s.lastSize.Load()
	}
	n := m.DiskSpaceUsage()
	s.lastSize.Store(n)
	return n
}

// metrics returns Pebble's metrics, or nil after a Pebble fatal error
// (the parked goroutine may hold the mutex they need). Safe for
// concurrent use; no disk access.
func (s *Spool) metrics() *pebble.Metrics {
	if s.plog.msg.Load() != nil {
		return nil
	}
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	return s.db.Metrics()
}

// EngineWork is what the storage engine wrote in the background since
// Open: memtable flushes and compactions. Bytes written per byte accepted
// is the spool's write amplification. Compaction time is wall time, not
// CPU: it includes waits for the disk, and compactions running at once
// add up (see splitAtKind).
type EngineWork struct {
	FlushedBytes   uint64        // sstable bytes written by memtable flushes
	CompactedBytes uint64        // sstable bytes written by compactions
	Compactions    int64         // compactions run (moves and deletions included)
	CompactionTime time.Duration // summed wall time of the compactions
}

// EngineWork returns the engine's background work since Open, from
// Pebble's metrics: for counter metrics. Safe for concurrent use. After a
// Pebble fatal error it returns zeros (the parked goroutine may hold the
// mutex the metrics need).
func (s *Spool) EngineWork() EngineWork {
	m := s.metrics()
	if m == nil {
		return EngineWork{}
	}
	w := EngineWork{Compactions: m.Compact.Count, CompactionTime: m.Compact.Duration}
	for _, l := range m.Levels {
		w.FlushedBytes += l.TableBytesFlushed
		w.CompactedBytes += l.TableBytesCompacted
	}
	return w
}

// FreeBytes returns the free space (bytes available to the relay's user)
// of the spool's filesystem as last read by statfs (at most one second
// old while mail is accepted), and the reserve below which acceptance is
// refused (negative: no reserve): for gauge metrics. Safe for concurrent
// use.
func (s *Spool) FreeBytes() (avail uint64, reserve int64) {
	return s.space.avail.Load(), s.minFree
}

// Reclaim gives the disk space of delivered messages back while the node
// runs instead of at the next restart. Call it periodically (housekeeping
// does, every 10 s). Two steps:
//
//   - when the live WAL holds walFlushAt bytes or more, it flushes the
//     memtable (in the background): a message accepted and deleted within
//     one memtable never reaches an sstable, and the WAL files behind the
//     flushed memtable are deleted (recycling is off, see deleteNoRecycle).
//     Without it the WAL grows to the memtable size (64 MiB by default)
//     however little live mail there is.
//   - when reclaimEvery messages were deleted since the last compaction,
//     or reclaimAfter passed with any, and reclaimGap (30 s) passed since
//     the last compaction (the first one after Open need not wait; always
//     with force or a full spool), it compacts
//     the key ranges that delivery and event export delete from (bodies,
//     messages, recipients, the event outbox: reclaimKinds), so the
//     sstables holding delivered messages are rewritten without them. The
//     message history is left alone: only the hourly prune deletes from
//     it, and it is most of the spool's bytes once mail flows (an earlier
//     single compaction from bodies to recipients rewrote it every time,
//     0.2–0.3 s of wall time every 10 s at 5,000 messages a second).
//
// It returns whether it compacted. A read-only or failed spool does
// nothing.
func (s *Spool) Reclaim(ctx context.Context, force bool) (bool, error) {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	if s.failed() != nil || s.readOnly.Load() {
		return false, nil
	}
	if m := s.db.Metrics(); m.WAL.Size >= walFlushAt {
		if err := s.write(func() error { _, err := s.db.AsyncFlush(); return err }); err != nil {
			return false, fmt.Errorf("spool flush: %w", err)
		}
	}
	n := s.deleted.Load()
	if n == 0 {
		return false, nil
	}
	if !force && !s.space.full.Load() {
		since := time.Since(s.lastReclaim.Load().(time.Time))
		if s.reclaimed.Load() && since < reclaimGap || n < reclaimEvery && since < reclaimAfter {
			return false, nil
		}
	}
	s.deleted.Add(-n)
	start := time.Now()
	before := s.db.Metrics().DiskSpaceUsage()
	// One kind at a time: sstables never span two kinds (splitAtKind), so
	// each compaction rewrites only the tables of its own kind, never the
	// message history between them.
	err := s.write(func() error {
		for _, k := range reclaimKinds {
			if err := s.db.Compact(ctx, []byte{k}, []byte{k + 1}, false); err != nil {
				return err
			}
		}
		return nil
	})
	s.lastReclaim.Store(time.Now())
	s.reclaimed.Store(true)
	if err != nil {
		return false, fmt.Errorf("spool compaction: %w", err)
	}
	s.log.Debug("spool compacted", "deleted_messages", n, "bytes_before", before, "bytes_after", s.db.Metrics().DiskSpaceUsage(), "took", time.Since(start))
	return true, nil
}

// reclaimKinds are the key kinds Reclaim compacts, each on its own.
var reclaimKinds = []byte{kBody, kEvent, kMeta, kRcpt}

// walFlushAt is the live WAL size (bytes) above which Reclaim flushes the
// memtable.
var walFlushAt uint64 = 16 << 20

// Compaction thresholds: after this many deleted messages, or after this
// long with any; never twice within reclaimGap unless the spool is full
// (or forced). A compaction took 0.2–0.3 s (wall time) on the project VM
// while mail flowed, and it showed in the acceptance tail each time: at
// 5,000 messages a second 2,000 deletions come every 0.4 s, so without
// the gap it ran at every 10 s housekeeping tick.
var (
	reclaimEvery int64 = 2000
	reclaimAfter       = 5 * time.Minute
	reclaimGap         = 30 * time.Second
)

// pebbleLogger sends Pebble's lines to slog: info at debug level, errors
// rate-limited, and Fatalf parks the calling goroutine (see Fatalf).
type pebbleLogger struct {
	l      *slog.Logger
	sample *logx.Sampler // one line per message text per 10 s

	fatalOnce sync.Once
	fatal     chan struct{} // closed by the first Fatalf
	msg       atomic.Pointer[string]
	onFatal   atomic.Pointer[func(msg string)]
}

func newPebbleLogger(l *slog.Logger) *pebbleLogger {
	return &pebbleLogger{l: l, sample: logx.NewSampler(10 * time.Second), fatal: make(chan struct{})}
}

func (p *pebbleLogger) fatalMsg() string {
	if m := p.msg.Load(); m != nil {
		return *m
	}
	return ""
}

func (p *pebbleLogger) Infof(format string, args ...any) {
	if p.l.Enabled(context.Background(), slog.LevelDebug) {
		p.l.Debug(fmt.Sprintf(format, args...))
	}
}

// events is the spool's Pebble event listener: flushes, compactions and
// WAL files are logged at debug level (Pebble's own lines), and a write
// stall, during which every acceptance waits for the storage engine, at
// warn level with its reason when it begins and its length when it ends
// (one pair per 10 s at most, the rest counted in similar_suppressed).
// Data corruption found by a read stays a Fatalf, as with Pebble's
// default listener (MakeLoggingEventListener would only log it): the
// spool fails rather than take writes over a damaged store.
func (p *pebbleLogger) events() *pebble.EventListener {
	el := pebble.MakeLoggingEventListener(p)
	el.DataCorruption = func(info pebble.DataCorruptionInfo) { p.Fatalf("%s", info) }
	var began atomic.Int64 // UnixNano of the stall under way
	el.WriteStallBegin = func(info pebble.WriteStallBeginInfo) {
		began.Store(time.Now().UnixNano())
		p.warnSampled("spool write stall began: acceptance waits for the storage engine to flush or compact (a disk too slow for the load?)", "reason", info.Reason)
	}
	el.WriteStallEnd = func() {
		if t := began.Swap(0); t != 0 {
			p.warnSampled("spool write stall ended", "took", time.Since(time.Unix(0, t)))
		}
	}
	return &el
}

// warnSampled logs msg at warn level at most once per 10 s.
func (p *pebbleLogger) warnSampled(msg string, args ...any) {
	p.sampled(slog.LevelWarn, msg, func() string { return msg }, args...)
}

// sampled logs the line msg makes at level, at most once per 10 s per
// key; the first line after a quiet spell counts the ones left out
// (similar_suppressed).
func (p *pebbleLogger) sampled(level slog.Level, key string, msg func() string, args ...any) {
	ok, n := p.sample.Allow(key)
	if !ok {
		return
	}
	if n > 0 {
		args = append(args, "similar_suppressed", n)
	}
	p.l.Log(context.Background(), level, msg(), args...)
}

func (p *pebbleLogger) Errorf(format string, args ...any) {
	p.sampled(slog.LevelError, format, func() string { return fmt.Sprintf(format, args...) })
}

// Fatalf is Pebble saying it cannot go on (a failed MANIFEST or WAL
// write, a failed commit, corruption): it may be called on any goroutine,
// a background flush or compaction included, often with DB.mu held.
// Exiting would crash the relay; returning or panicking would run Pebble
// on with inconsistent state (a recovered panic would also leave its
// mutexes locked). So the first Fatalf fails the spool (onFatal: every
// later write returns 452 4.3.1 at once, reads keep working as far as
// they do not need what the parked goroutine holds), logs one line, and
// every Fatalf parks its goroutine for the life of the process.
//
// The Fatalf calls of pebble v2.1.7 that a full or failing disk can reach:
// "fatal commit error" (db.go, a WAL write or sync failed; the committing
// goroutine, i.e. one of ours inside write), "MANIFEST flush/sync/set
// current failed" (version_set.go, creating a database) and any error
// while writing a version edit to the MANIFEST (version_set.go
// logAndApply: after a flush or a compaction, in Pebble's background
// goroutines, with DB.mu held), "could not update state for compaction"
// (compaction.go) and data corruption found by a read (event.go). The
// write floor keeps the first two away in practice; the others remain
// possible (e.g. the disk filled between the check and a flush).
func (p *pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.fatalOnce.Do(func() {
		p.msg.Store(&msg)
		p.l.Error("pebble fatal error; its goroutine is parked and the spool stops writing until restart", "err", msg)
		if f := p.onFatal.Load(); f != nil {
			(*f)(msg)
		}
		close(p.fatal)
	})
	select {} // park: see the doc comment
}

var _ pebble.Logger = (*pebbleLogger)(nil)
