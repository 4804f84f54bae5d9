// Package relay owns every mail transaction, whatever its source. SMTP
// sessions, HTTP requests and the bounces Sluice generates all go through
// the same steps here:
//
//	Session (one SMTP connection or HTTP request): Connect, Helo, Auth
//	Txn (one message): Begin (on_mail) -> Rcpt (on_rcpt) -> Commit
//	  Commit: Received field, on_message, on_route per recipient, one
//	  synced spool write (message, routed recipients, their events), then
//	  the delivery queue.
//
// It runs every Chain call, records "rejected" events by one rule (below),
// writes the Received trace field, logs each refusal once and runs the
// commit hook (idempotency records). Sources are thin adapters: they speak
// their protocol and map errors to their replies with pipeline.Reply.
//
// The rule for "rejected" events: a refusal at on_mail records one event
// for the transaction (empty recipient; no recipient is known yet); every
// other refusal records one event per recipient it refuses: at on_rcpt
// that recipient, at on_route each refused recipient, and when the whole
// message is refused after RCPT (on_message, bad data, spool failure)
// each recipient not already refused. A transaction the client abandons
// (RSET, QUIT, a hang-up) records nothing. A recipient refused because
// it is on its tenant's suppression list records a "suppressed" event
// instead of "rejected" (suppression.go).
//
// Each Txn runs on the pipeline that was current when it began: a reload
// (Swap) lets transactions in flight finish on the old pipeline, which is
// closed when the last of them ends.
package relay

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-mta/sluice/internal/auth"
	"github.com/sluice-mta/sluice/internal/logx"
	"github.com/sluice-mta/sluice/internal/metrics"
	"github.com/sluice-mta/sluice/internal/queue"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// Recipient statuses in a Receipt.
const (
	StatusQueued    = "queued"
	StatusRejected  = "rejected"
	StatusDiscarded = "discarded"
)

// RcptResult is the outcome of one recipient at acceptance.
type RcptResult struct {
	Address string
	Status  string
	Err     *pipeline.Error // when rejected (permanent or temporary)
}

// Receipt is what Commit accepted.
type Receipt struct {
	MessageID  string
	Recipients []RcptResult
	Queued     int
	Discarded  bool
}

// Pipeline is one loaded configuration's compiled chain and what closes
// its stages. Transactions hold a reference while they run; after Swap
// replaces it, it is closed when the last reference is released.
type Pipeline struct {
	Chain   *pipeline.Chain
	close   func()
	refs    atomic.Int64
	retired atomic.Bool
	once    sync.Once
}

// NewPipeline wraps chain; close (may be nil) releases its stages.
func NewPipeline(chain *pipeline.Chain, close func()) *Pipeline {
	return &Pipeline{Chain: chain, close: close}
}

func (p *Pipeline) release() {
	if p.refs.Add(-1) == 0 && p.retired.Load() {
		p.shut()
	}
}

func (p *Pipeline) shut() {
	p.once.Do(func() {
		if p.close != nil {
			p.close()
		}
	})
}

// Store is the durable side of acceptance.
type Store interface {
	// NewID returns a new, strictly increasing message or connection id.
	NewID() string
	// Commit writes the accepted messages (and, with each, what
	// before adds to its batch) with one synced write, then queues them.
	// On error nothing of them was written.
	Commit(ctx context.Context, accs []*Accepted, before BeforeCommit) error
	// Record writes events that belong to no accepted message (refusals),
	// without waiting for a sync.
	Record(evs []*pipeline.Event) error
}

// BeforeCommit is called for each accepted message with the batch it
// commits in, so a source can store its answer (an idempotency record)
// atomically with the message.
type BeforeCommit func(b *spool.Batch, acc *Accepted) error

// Accepted is a message that passed the pipeline and is ready to be
// written: its bytes, metadata, routed recipients and the events that
// record its acceptance.
type Accepted struct {
	Msg *pipeline.Message
	// Head and Body are the message as it is spooled, in two parts so
	// that the body is written from where it was received without a copy
	// of the whole message: Head is the header section after on_message
	// (with the empty line that ends it when the message has one), Body
	// is Msg.Body. Neither may change until the commit returns.
	Head, Body []byte
	Meta       *spool.Meta
	Rcpts      []*spool.Recipient
	Events     []*pipeline.Event
	Receipt    *Receipt
	// Bounce is a DSN (itself accepted through the pipeline) for
	// recipients refused at on_route, written with the message.
	Bounce *Accepted
}

// Size is the size of the message as spooled, in octets.
func (a *Accepted) Size() int { return len(a.Head) + len(a.Body) }

// Bytes returns the message as spooled (a copy: header and body).
func (a *Accepted) Bytes() []byte {
	return append(append(make([]byte, 0, a.Size()), a.Head...), a.Body...)
}

// Relay is safe for concurrent use.
type Relay struct {
	pipe     atomic.Pointer[Pipeline]
	store    Store
	log      *slog.Logger
	sample   *logx.Sampler // refusal events that cannot be recorded
	hostname string
	now      func() time.Time
	// delayWarning is Options.DelayWarning (see Notify).
	delayWarning time.Duration
	admit        func() error
	supp         Suppressions  // nil: no suppression list
	domains      SenderDomains // nil: no sending domain rule
	users        Verifier      // nil: no users file (senders.go)
	guard        *auth.Guard   // nil: no brute-force limits
	authSample   *logx.Sampler // failed authentications, per client address
	metrics      *metrics.Node // nil: none
	sandbox      func(c *pipeline.Conn) (string, bool)
	inspect      func(msg *pipeline.Message) *pipeline.Event

	// The gate keeps the store open while acceptances are in flight:
	// Close refuses new ones and waits for the others.
	gate     sync.RWMutex
	closed   bool
	inflight sync.WaitGroup
}

// ErrClosed is returned once the relay is closing.
var ErrClosed = &pipeline.Error{Code: 421, Enhanced: pipeline.EnhancedCode{4, 3, 2}, Message: "Service shutting down, try again later"}

// Options configures New.
type Options struct {
	// Hostname names this node in Received fields when the connection
	// does not (pipeline.Conn.ServerName) and in DSNs. Default "localhost".
	Hostname string
	Logger   *slog.Logger
	Now      func() time.Time // default time.Now
	// DelayWarning is how long a recipient waits in the queue before its
	// sender gets a delay warning, and then the least time between two
	// warnings about it (see Notify): sluice.delivery's delay_warning.
	// Zero sends no delay warnings.
	DelayWarning time.Duration
	// Admit, when set, is consulted at each commit before the write: an
	// error (a *pipeline.Error, e.g. the event backlog over budget)
	// refuses the transaction with it. It must be cheap and safe for
	// concurrent use.
	Admit func() error
	// Suppressions, when set, is the suppression list enforced at RCPT
	// (see Txn.RcptWith and suppression.go).
	Suppressions Suppressions
	// Domains, when set, is the sending domain rule checked at MAIL after
	// the sender rule (domains.go).
	Domains SenderDomains
	// Users, when set, verifies user names and passwords (the users
	// file) before on_auth runs (see Session.Login).
	Users Verifier
	// Guard, when set, limits failed authentications per client address
	// and per user across sessions (see Session.Login).
	Guard *auth.Guard
	// Metrics, when set, counts accepted and refused messages and times
	// spool commits (sluice_messages_accepted_total, sluice_refusals_total,
	// sluice_spool_commit_duration_seconds). Sources read it through
	// Relay.Metrics.
	Metrics *metrics.Node
	// Sandbox, when set, names the sandbox inbox a connection's mail is
	// captured into (a sandbox tenant, a sandbox SMTP listener): every
	// recipient it accepts is routed there, whatever on_route chose
	// (docs/sandbox.md). ok false: routes stand.
	Sandbox func(c *pipeline.Conn) (tenant string, ok bool)
	// Inspect, when set, sees each message the relay accepts (after
	// on_message and on_route, discarded recipients included); an event
	// it returns is recorded with the message, in the same write
	// (internal/tlsrpt: a received TLS report becomes a tls_report
	// event). It runs on the accepting goroutine: it must be cheap for
	// ordinary mail and safe for concurrent use.
	Inspect func(msg *pipeline.Message) *pipeline.Event
}

// New builds a Relay running p on store.
func New(p *Pipeline, store Store, o Options) *Relay {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Hostname == "" {
		o.Hostname = "localhost"
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	r := &Relay{store: store, log: o.Logger.With("component", "relay"), hostname: o.Hostname, now: o.Now,
		sample:       logx.NewSampler(10 * time.Second),
		delayWarning: o.DelayWarning, supp: o.Suppressions, domains: o.Domains, admit: o.Admit,
		users: o.Users, guard: o.Guard, authSample: logx.NewSampler(10 * time.Second), metrics: o.Metrics, sandbox: o.Sandbox,
		inspect: o.Inspect}
	r.pipe.Store(p)
	return r
}

// NewSpool builds a Relay whose store is sp and q (the production store).
// Call q.SetBouncer(r) so that bounces enter through the relay.
func NewSpool(p *Pipeline, sp *spool.Spool, q *queue.Queue, o Options) *Relay {
	return New(p, &SpoolStore{Spool: sp, Queue: q}, o)
}

// Swap makes p the pipeline of transactions that begin from now on. The
// previous pipeline is closed once the transactions running on it end.
func (r *Relay) Swap(p *Pipeline) {
	old := r.pipe.Swap(p)
	if old != nil && old != p {
		old.retired.Store(true)
		if old.refs.Load() == 0 {
			old.shut()
		}
	}
}

// Pipeline returns the current pipeline (without taking a reference).
func (r *Relay) Pipeline() *Pipeline { return r.pipe.Load() }

// Chain returns the current compiled chain.
func (r *Relay) Chain() *pipeline.Chain { return r.pipe.Load().Chain }

// acquire takes a reference on the current pipeline.
func (r *Relay) acquire() *Pipeline {
	for {
		p := r.pipe.Load()
		p.refs.Add(1)
		if r.pipe.Load() == p {
			return p
		}
		p.release()
	}
}

// Metrics returns Options.Metrics (nil: none).
func (r *Relay) Metrics() *metrics.Node { return r.metrics }

// NewID returns a new id from the store (ULID, strictly increasing).
func (r *Relay) NewID() string { return r.store.NewID() }

func (r *Relay) enter() bool {
	r.gate.RLock()
	defer r.gate.RUnlock()
	if r.closed {
		return false
	}
	r.inflight.Add(1)
	return true
}

// Close refuses new commits and waits, until ctx ends, for those in
// flight to finish, so the store can be closed after it. It reports
// whether all finished. It does not close the pipeline.
func (r *Relay) Close(ctx context.Context) bool {
	r.gate.Lock()
	r.closed = true
	r.gate.Unlock()
	done := make(chan struct{})
	go func() { r.inflight.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}

// record writes refusal events; failures are logged (the refusal itself
// was answered already).
func (r *Relay) record(evs ...*pipeline.Event) {
	if len(evs) == 0 || !r.enter() {
		return
	}
	defer r.inflight.Done()
	if err := r.store.Record(evs); err != nil {
		r.recordFailed(err, evs[0].MessageID)
	}
}

// recordFailed logs a failure to record refusal events, one line per 10 s
// (a full spool would otherwise log one per refused message).
func (r *Relay) recordFailed(err error, msgID string) {
	if ok, n := r.sample.Allow("record"); ok {
		r.log.Warn("cannot record rejected events", "msgid", msgID, "err", err, "similar_suppressed", n)
	}
}

// logRefusal logs a refusal once: policy decisions at info, failures with
// an internal cause (or no *pipeline.Error at all) at warn.
func (r *Relay) logRefusal(msg string, conn *pipeline.Conn, err error, attrs ...any) {
	level := slog.LevelInfo
	var pe *pipeline.Error
	ok := errors.As(err, &pe)
	if !ok || pe.Cause != nil {
		level = slog.LevelWarn
	}
	rep := pipeline.Reply(err)
	r.countRefusal(msg, conn, pe, rep.Code)
	attrs = append(attrs, "source", conn.Source, "conn", conn.ID, "remote_ip", conn.RemoteIP.String(),
		"code", rep.Code, "enhanced", rep.Enhanced.String(), "text", rep.Message)
	if conn.Listener != "" {
		attrs = append(attrs, "listener", conn.Listener)
	}
	if ok && pe.Stage != "" {
		attrs = append(attrs, "stage", pe.Stage)
	}
	if level == slog.LevelWarn {
		attrs = append(attrs, "err", err)
	}
	r.log.Log(context.Background(), level, msg, attrs...)
}

// countRefusal counts one refusal in sluice_refusals_total. The phase
// comes from logRefusal's fixed message texts.
func (r *Relay) countRefusal(msg string, conn *pipeline.Conn, pe *pipeline.Error, code int) {
	if r.metrics == nil {
		return
	}
	var phase string
	switch msg {
	case "connection refused":
		phase = "connect"
	case "helo refused":
		phase = "helo"
	case "authentication refused", "identity refused":
		phase = "auth"
	case "sender refused":
		phase = "mail"
	case "recipient refused", "recipient suppressed":
		phase = "rcpt"
	default:
		phase = "message"
	}
	stage := ""
	if pe != nil {
		stage = pe.Stage
	}
	r.metrics.Refused.WithLabelValues(conn.Source, conn.Listener, phase, stage, metrics.Status(code)).Inc()
}

// ClosePipeline retires the current pipeline at shutdown: it is closed
// once the transactions still running on it end (at once if none).
func (r *Relay) ClosePipeline() { ClosePipeline(r.pipe.Load()) }

// ClosePipeline retires p: it is closed once its last reference is
// released (at once if it has none).
func ClosePipeline(p *Pipeline) {
	if p == nil {
		return
	}
	p.retired.Store(true)
	if p.refs.Load() == 0 {
		p.shut()
	}
}
