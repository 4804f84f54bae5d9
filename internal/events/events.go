// Package events publishes the spool's event outbox to its consumers: the
// sinks (a JSONL file now, Kafka later) and the on_event hooks. Each
// consumer runs in its own goroutine from its own cursor, stored in the
// spool, so a consumer that fails or is slow never holds back another, nor
// acceptance or delivery: it only holds back the pruning of the outbox,
// which keeps every event until the slowest consumer has taken it.
//
// Events reach each consumer at least once, in outbox order, with no
// gaps: a consumer that fails is retried with backoff from its own cursor.
// After a crash a consumer may receive again the events of the batch it
// was writing (its cursor is stored after each batch).
//
// This package is not the outbox itself (internal/spool), and it does not
// decide what an event contains (pipeline.Event).
package events

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// Event is one outbox event as a consumer receives it: its outbox seq,
// its type and message id (so a sink routes without decoding JSON), and
// the encoded JSON object (the public event schema). A sink must not
// modify JSON or append to it in place.
type Event = spool.OutboxEvent

// Sink receives batches of events, in outbox order. Write must return
// only once the whole batch is durable at the sink, or fail as a whole
// (the batch is then written again). Write is called from one goroutine
// at a time. Name must be stable across restarts and unique among the
// sinks: it names the sink's cursor in the spool.
type Sink interface {
	Name() string
	Write(ctx context.Context, batch []Event) error
	Close() error
}

// FileSink appends events as JSON lines to a file and fsyncs each batch.
// Write, Reopen and Close are safe for concurrent use.
type FileSink struct {
	mu   sync.Mutex
	f    *os.File
	path string
	buf  []byte
}

// OpenFile opens (creating) path for appending.
func OpenFile(path string) (*FileSink, error) {
	f, err := openEventsFile(path)
	if err != nil {
		return nil, err
	}
	return &FileSink{f: f, path: path}, nil
}

func openEventsFile(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("events file: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("events file: %w", err)
	}
	if err := dropTornLine(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("events file %s: %w", path, err)
	}
	return f, nil
}

// dropTornLine truncates a last line that a crash cut short (no trailing
// newline). Its events were never acknowledged in the outbox, so they are
// exported again; keeping the torn line would leave invalid JSON in front
// of them.
func dropTornLine(f *os.File) error {
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return err
	}
	buf := make([]byte, 64<<10)
	end := st.Size()
	for pos := end; pos > 0; {
		n := int64(len(buf))
		if pos < n {
			n = pos
		}
		pos -= n
		if _, err := f.ReadAt(buf[:n], pos); err != nil {
			return err
		}
		if pos+n == end && buf[n-1] == '\n' {
			return nil // ends cleanly
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			return f.Truncate(pos + int64(i) + 1)
		}
	}
	return f.Truncate(0) // a single torn line
}

// Name is "file:" and the configured path.
func (s *FileSink) Name() string { return "file:" + s.path }

// Write appends batch, one line per event, and fsyncs.
func (s *FileSink) Write(ctx context.Context, batch []Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf = s.buf[:0]
	for _, e := range batch {
		s.buf = append(s.buf, e.JSON...)
		s.buf = append(s.buf, '\n')
	}
	st, err := s.f.Stat()
	if err != nil {
		return err
	}
	if _, err := s.f.Write(s.buf); err != nil {
		// A partial write (disk full) would leave a torn line in front of
		// the retried batch: cut the file back to where it was.
		_ = s.f.Truncate(st.Size())
		return err
	}
	if err := s.f.Sync(); err != nil {
		_ = s.f.Truncate(st.Size())
		return err
	}
	return nil
}

// Reopen closes the file and opens the configured path again, creating
// it: after log rotation moved the file away, the next events go to a new
// file at the path. A batch being written finishes in the old file first.
// When the path cannot be opened, the sink keeps writing to the old file
// and Reopen returns the error.
func (s *FileSink) Reopen() error {
	nf, err := openEventsFile(s.path)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.f
	s.f = nf
	if err := old.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("events file %s: closing the previous file: %w", s.path, err)
	}
	return nil
}

// Close closes the file.
func (s *FileSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.f.Close()
}

// OnEventConsumer names the on_event hooks' cursor in the spool.
const OnEventConsumer = "on_event"

// Options configures an Exporter. Zero values take the defaults.
type Options struct {
	// OnEvent, when set, is a consumer of its own (cursor OnEventConsumer)
	// that decodes each event and calls it: the chain's on_event hooks.
	// It is called from one goroutine, in outbox order.
	OnEvent func(context.Context, *pipeline.Event)
	// WantEvents, when set, is asked before each batch of the on_event
	// consumer: false (no stage has an on_event hook now; a reload may add
	// one) moves its cursor past the events without reading them.
	WantEvents func() bool
	Logger     *slog.Logger
	// Metrics, when set, receives the exporter's metrics (per consumer:
	// sluice_events_exported_total, sluice_event_export_errors_total,
	// sluice_event_consumer_lag_events). Registering fails NewExporter
	// when the registry already holds them.
	Metrics prometheus.Registerer
	// BatchSize is the most events read and written at once (1000).
	BatchSize int
	// RetryInitial and RetryMax bound the backoff of a failing consumer
	// (100 ms doubling to 10 s, with jitter).
	RetryInitial, RetryMax time.Duration
	// Poll is how often an idle consumer looks at the outbox without
	// being woken by a commit (200 ms).
	Poll time.Duration
	// Linger is the least time between two exports of one consumer when
	// it is keeping up (10 ms): events committed meanwhile go out in one
	// batch, so a sink syncs at most 1/Linger times a second instead of
	// once per commit. A consumer with a full batch waiting does not
	// linger. Negative: no lingering.
	Linger time.Duration
}

// Exporter moves events from the spool's outbox to its consumers, each in
// its own goroutine from its own cursor, and prunes the outbox below the
// slowest of them. Build it with NewExporter, call Run once.
type Exporter struct {
	sp   *spool.Spool
	cons []*consumer
	log  *slog.Logger
	o    Options
	done chan struct{}

	pruneFailing atomic.Bool
	// lastPrune (UnixNano) and prunePending throttle pruning while events
	// flow (pruneSoon).
	lastPrune    atomic.Int64
	prunePending atomic.Bool

	exported, failures *prometheus.CounterVec
}

// consumer is one sink or the on_event hooks, with its cursor.
type consumer struct {
	name string
	// exported and failures are this consumer's series of
	// sluice_events_exported_total and sluice_event_export_errors_total.
	exported, failures prometheus.Counter
	// write hands over a batch and returns how many of its events are
	// done: a sink all or none, the on_event hooks those it ran before
	// ctx ended.
	write func(ctx context.Context, batch []Event) (int, error)
	wake  chan struct{}
	next  atomic.Uint64 // seq of the next event to take
	saved uint64        // next as last stored in the spool (owned by its goroutine)
	// idle, when set and true, means the consumer wants no events now
	// (no on_event hook): its cursor moves to the outbox head without
	// reading or storing anything, so it costs the others nothing.
	idle func() bool
}

// NewExporter builds an exporter for sinks and, when o.OnEvent is set,
// the on_event hooks. It does no I/O; it fails when two consumers share a
// name. The exporter does not close the sinks.
func NewExporter(sp *spool.Spool, sinks []Sink, o Options) (*Exporter, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 1000
	}
	if o.RetryInitial <= 0 {
		o.RetryInitial = 100 * time.Millisecond
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 10 * time.Second
	}
	if o.Linger == 0 {
		o.Linger = 10 * time.Millisecond
	}
	if o.Poll <= 0 {
		o.Poll = 200 * time.Millisecond
	}
	e := &Exporter{sp: sp, log: o.Logger.With("component", "events"), o: o, done: make(chan struct{})}
	seen := map[string]bool{}
	add := func(name string, write func(context.Context, []Event) (int, error)) error {
		if name == "" || seen[name] {
			return fmt.Errorf("events: two consumers named %q (a sink's name must be unique and not empty)", name)
		}
		seen[name] = true
		e.cons = append(e.cons, &consumer{name: name, write: write, wake: make(chan struct{}, 1)})
		return nil
	}
	for _, s := range sinks {
		err := add(s.Name(), func(ctx context.Context, b []Event) (int, error) {
			if err := s.Write(ctx, b); err != nil {
				return 0, err
			}
			return len(b), nil
		})
		if err != nil {
			return nil, err
		}
	}
	if o.OnEvent != nil {
		if err := add(OnEventConsumer, e.runHooks); err != nil {
			return nil, err
		}
		if o.WantEvents != nil {
			want := o.WantEvents
			e.cons[len(e.cons)-1].idle = func() bool { return !want() }
		}
	}
	if err := e.register(o.Metrics); err != nil {
		return nil, err
	}
	return e, nil
}

// register builds the exporter's metrics; with reg nil they are counted
// but not exported.
func (e *Exporter) register(reg prometheus.Registerer) error {
	e.exported = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_events_exported_total",
		Help: "Events handed over to a consumer (a sink or the on_event hooks) and acknowledged by it.",
	}, []string{"consumer"})
	e.failures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_event_export_errors_total",
		Help: "Failed export attempts per consumer; each is retried with backoff from the consumer's cursor.",
	}, []string{"consumer"})
	lag := prometheus.NewDesc("sluice_event_consumer_lag_events",
		"Events in the outbox that a consumer has not taken yet.", []string{"consumer"}, nil)
	for _, c := range e.cons {
		// Resolved once: a batch then costs an atomic add, not a label lookup.
		c.exported = e.exported.WithLabelValues(c.name)
		c.failures = e.failures.WithLabelValues(c.name)
	}
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{e.exported, e.failures, lagCollector{e, lag}} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("events: registering metrics: %w", err)
		}
	}
	return nil
}

// lagCollector reports each consumer's lag at scrape time.
type lagCollector struct {
	e    *Exporter
	desc *prometheus.Desc
}

func (l lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- l.desc }

func (l lagCollector) Collect(ch chan<- prometheus.Metric) {
	head := l.e.sp.OutboxHead()
	for _, c := range l.e.cons {
		lag := float64(0)
		if n := c.next.Load(); head > n {
			lag = float64(head - n)
		}
		ch <- prometheus.MustNewConstMetric(l.desc, prometheus.GaugeValue, lag, c.name)
	}
}

// runHooks is the on_event consumer: the only one that decodes JSON.
func (e *Exporter) runHooks(ctx context.Context, batch []Event) (int, error) {
	for i := range batch {
		if err := ctx.Err(); err != nil {
			return i, err
		}
		var ev pipeline.Event
		if err := json.Unmarshal(batch[i].JSON, &ev); err != nil {
			e.log.Error("undecodable event skipped by the on_event hooks", "seq", batch[i].Seq, "err", err)
			continue
		}
		e.o.OnEvent(ctx, &ev)
	}
	return len(batch), nil
}

// Run starts the consumers and returns when ctx is cancelled and each of
// them has exported what is left once more (bounded to 5 s; a failing
// consumer stops at once). Done is closed when it returns.
func (e *Exporter) Run(ctx context.Context) {
	defer close(e.done)
	if len(e.cons) == 0 {
		<-ctx.Done()
		return
	}
	for backoff := e.o.RetryInitial; ; backoff = min(backoff*2, e.o.RetryMax) {
		err := e.loadCursors()
		if err == nil {
			break
		}
		d := jitter(backoff)
		e.log.Error("cannot read the event cursors; retrying", "err", err, "retry_in", d)
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return
		}
	}
	e.prune()

	stopWake := make(chan struct{})
	go func() { // fan the spool's commit signal out to every consumer
		for {
			select {
			case <-stopWake:
				return
			case <-e.sp.OutboxNotify():
				for _, c := range e.cons {
					select {
					case c.wake <- struct{}{}:
					default:
					}
				}
			}
		}
	}()
	var wg sync.WaitGroup
	for _, c := range e.cons {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.runConsumer(ctx, c)
		}()
	}
	wg.Wait()
	close(stopWake)
}

// Done is closed when Run has returned.
func (e *Exporter) Done() <-chan struct{} { return e.done }

// loadCursors reads the configured consumers' cursors, gives a new
// consumer one at the oldest event still in the outbox, and deletes the
// cursors of consumers no longer configured.
func (e *Exporter) loadCursors() error {
	stored, err := e.sp.Cursors()
	if err != nil {
		return err
	}
	first, err := e.sp.FirstOutboxSeq()
	if err != nil {
		return err
	}
	for _, c := range e.cons {
		next, ok := stored[c.name]
		delete(stored, c.name)
		if !ok {
			next = first
			if err := e.sp.SetCursor(c.name, next); err != nil {
				return err
			}
			e.log.Info("new event consumer starts at the oldest event in the outbox", "consumer", c.name, "seq", next)
		}
		c.next.Store(next)
		c.saved = next
	}
	for name := range stored {
		if err := e.sp.DeleteCursor(name); err != nil {
			return err
		}
		e.log.Info("deleted the cursor of an event consumer no longer configured", "consumer", name)
	}
	return nil
}

// failureLogEvery is how often a consumer that keeps failing with the
// same error logs it again (the first failure and a changed error are
// logged at once).
const failureLogEvery = 30 * time.Second

func (e *Exporter) runConsumer(ctx context.Context, c *consumer) {
	tick := time.NewTicker(e.o.Poll)
	defer tick.Stop()
	backoff := e.o.RetryInitial
	var failingSince, last, logged time.Time
	var failed int     // attempts failed since failingSince
	var lastErr string // the error last logged
	for {
		if e.o.Linger > 0 {
			// Let a burst of commits gather into one batch.
			if d := time.Until(last.Add(e.o.Linger)); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-t.C:
				case <-ctx.Done():
				}
				t.Stop()
			}
		}
		last = time.Now()
		n, err := e.exportOnce(ctx, c)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.failures.Inc()
			now := time.Now()
			if failingSince.IsZero() {
				failingSince = now
			}
			failed++
			d := jitter(backoff)
			// A sink that stays down fails every few seconds: log the
			// first failure, a changed error, and then once per
			// failureLogEvery, so an outage does not flood the log
			// (the failures counter has every attempt).
			if msg := err.Error(); failed == 1 || msg != lastErr || now.Sub(logged) >= failureLogEvery {
				e.log.Error("event export failed; retrying", "consumer", c.name, "err", err, "retry_in", d,
					"failed_attempts", failed, "failing_for", now.Sub(failingSince).Round(time.Millisecond))
				logged, lastErr = now, msg
			}
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return
			}
			backoff = min(backoff*2, e.o.RetryMax)
			continue
		}
		if !failingSince.IsZero() {
			e.log.Info("event export resumed", "consumer", c.name, "failed_for", time.Since(failingSince).Round(time.Millisecond),
				"failed_attempts", failed)
			failingSince, failed, lastErr = time.Time{}, 0, ""
		}
		backoff = e.o.RetryInitial
		if n == e.o.BatchSize {
			last = time.Time{} // more waiting: no lingering
			continue
		}
		select {
		case <-ctx.Done():
			// Final drain with a fresh, bounded context.
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			for {
				n, err := e.exportOnce(dctx, c)
				if err != nil || n == 0 {
					break
				}
			}
			cancel()
			return
		case <-c.wake:
		case <-tick.C:
		}
	}
}

// exportOnce hands the next batch after c's cursor to c, then stores the
// cursor and prunes what every consumer has taken.
func (e *Exporter) exportOnce(ctx context.Context, c *consumer) (int, error) {
	if c.idle != nil && c.idle() {
		// The cursor is stored lazily: after a crash it may be behind,
		// and the consumer skips again (or, with hooks added meanwhile,
		// replays from there: at least once).
		if head := e.sp.OutboxHead(); head > c.next.Load() {
			c.next.Store(head)
			e.pruneSoon()
		} else {
			e.prunePutOff(c)
		}
		return 0, nil
	}
	if err := e.saveCursor(c); err != nil {
		return 0, err
	}
	evs, err := e.sp.ReadOutbox(c.next.Load(), e.o.BatchSize)
	if err == nil && len(evs) == 0 {
		e.prunePutOff(c) // at the latest a Poll after the last events
	}
	if err != nil || len(evs) == 0 {
		return 0, err
	}
	n, err := c.write(ctx, evs)
	if n > 0 {
		c.next.Store(evs[n-1].Seq + 1)
		c.exported.Add(float64(n))
	}
	if err != nil {
		_ = e.saveCursor(c) // the events it did take (on_event at shutdown)
		return 0, err
	}
	if err := e.saveCursor(c); err != nil {
		return 0, err
	}
	e.pruneSoon()
	return n, nil
}

// pruneEvery is the least time between two prunes while events flow. A
// prune costs a scan and a write whatever it deletes; once per export
// round (every Linger, for each consumer) it was a few percent of the
// relay's CPU at 4,000 msgs/s (issue 21). The outbox then keeps at most
// pruneEvery's worth of exported events longer.
const pruneEvery = 100 * time.Millisecond

// pruneSoon prunes now if the last prune is pruneEvery old, or leaves it
// to the next idle round (a consumer that finds nothing new, at the latest
// at its next Poll) or the next pruneSoon. Safe for concurrent use.
func (e *Exporter) pruneSoon() {
	now := time.Now().UnixNano()
	last := e.lastPrune.Load()
	if now-last < int64(pruneEvery) || !e.lastPrune.CompareAndSwap(last, now) {
		e.prunePending.Store(true)
		return
	}
	e.prunePending.Store(false)
	e.prune()
}

// prunePutOff runs a prune pruneSoon put off, from a round of c that found
// nothing to export. It stores c's cursor first: that write fails once the
// spool is closed (an exporter that outlives its spool, as some tests
// let it), where PruneOutbox's read would panic. Call it from c's
// goroutine.
func (e *Exporter) prunePutOff(c *consumer) {
	if !e.prunePending.Load() {
		return
	}
	next := c.next.Load()
	if err := e.sp.SetCursor(c.name, next); err != nil {
		return
	}
	c.saved = next
	if e.prunePending.Swap(false) {
		e.prune()
	}
}

// saveCursor stores c's cursor if it moved. A failure is retried before
// the next read, so the events already written are not written again.
func (e *Exporter) saveCursor(c *consumer) error {
	next := c.next.Load()
	if next == c.saved {
		return nil
	}
	if err := e.sp.SetCursor(c.name, next); err != nil {
		return fmt.Errorf("storing the cursor: %w", err)
	}
	c.saved = next
	return nil
}

// prune deletes the events every consumer has taken.
func (e *Exporter) prune() {
	e.lastPrune.Store(time.Now().UnixNano())
	low := e.cons[0].next.Load()
	for _, c := range e.cons[1:] {
		low = min(low, c.next.Load())
	}
	if _, err := e.sp.PruneOutbox(low); err != nil {
		if !e.pruneFailing.Swap(true) { // once per failing stretch
			e.log.Error("pruning the event outbox failed", "err", err)
		}
		return
	}
	if e.pruneFailing.Swap(false) {
		e.log.Info("pruning the event outbox works again")
	}
}

// jitter spreads d over [d/2, 3d/2) so consumers and restarts do not
// retry in step.
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d)
}
