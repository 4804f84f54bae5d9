// Package relay is the acceptance path shared by every source (SMTP, HTTP):
// it runs on_message and on_route, writes the message, its routed
// recipients and their events to the spool in one synced batch, and hands
// the recipients to the delivery queue. A source acknowledges (250, 202)
// only after Submit returns without error.
package relay

import (
	"context"
	"errors"
	"log/slog"
	"sync"

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

// Receipt is what Submit accepted.
type Receipt struct {
	MessageID  string
	Recipients []RcptResult
	Queued     int
	Discarded  bool
}

// Relay is safe for concurrent use.
type Relay struct {
	chain *pipeline.Chain
	sp    *spool.Spool
	q     *queue.Queue
	log   *slog.Logger

	// The gate keeps the spool open while acceptances are in flight:
	// Close refuses new ones and waits for the others.
	gate     sync.RWMutex
	closed   bool
	inflight sync.WaitGroup
}

// ErrClosed is returned once the relay is closing.
var ErrClosed = &pipeline.Error{Code: 421, Enhanced: pipeline.EnhancedCode{4, 3, 2}, Message: "Service shutting down, try again later"}

func (r *Relay) enter() bool {
	r.gate.RLock()
	defer r.gate.RUnlock()
	if r.closed {
		return false
	}
	r.inflight.Add(1)
	return true
}

// Close refuses new submissions and waits, until ctx ends, for those in
// flight to finish, so the spool can be closed after it. It reports
// whether all finished.
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

// New builds a Relay.
func New(chain *pipeline.Chain, sp *spool.Spool, q *queue.Queue, log *slog.Logger) *Relay {
	if log == nil {
		log = slog.Default()
	}
	return &Relay{chain: chain, sp: sp, q: q, log: log}
}

// Chain returns the pipeline the relay runs.
func (r *Relay) Chain() *pipeline.Chain { return r.chain }

// Spool returns the spool.
func (r *Relay) Spool() *spool.Spool { return r.sp }

// NewID returns a new message id (ULID).
func (r *Relay) NewID() string { return r.sp.NewID() }

// prepared is a message that passed the stages and is ready to commit.
type prepared struct {
	receipt *Receipt
	meta    *spool.Meta
	rcpts   []*spool.Recipient
	bMeta   *spool.Meta // a DSN for recipients refused at on_route (SMTP)
	bRcpts  []*spool.Recipient
}

// Options for one submission.
type Options struct {
	// BounceRouteRejects: recipients refused permanently at on_route get a
	// DSN (SMTP, where the DATA reply cannot be per recipient) instead of
	// only a per-recipient result (HTTP); a temporary refusal of any
	// recipient fails the whole message with that 4xx.
	BounceRouteRejects bool
	// BeforeCommit, when set, is called for each message that will be
	// committed, with the batch it commits in, so that a source can store
	// its answer (an idempotency record) atomically with the message.
	BeforeCommit func(b *spool.Batch, msg *pipeline.Message, rc *Receipt) error
}

func (r *Relay) event(typ string, msg *pipeline.Message, rcpt string, size int) *pipeline.Event {
	return &pipeline.Event{
		Type: typ, MessageID: msg.ID, Recipient: rcpt, Sender: msg.Sender, Source: msg.Conn.Source,
		Tenant: msg.Conn.Tenant(), Tags: msg.Tags, Metadata: msg.Meta, Size: size,
	}
}

// prepare runs on_message and on_route and stages the spool writes in b.
// It returns an error (nothing staged) when the whole message is refused.
func (r *Relay) prepare(ctx context.Context, b *spool.Batch, msg *pipeline.Message, o Options) (*prepared, error) {
	if len(msg.Recipients) == 0 {
		return nil, pipeline.Errorf(554, pipeline.EnhancedCode{5, 5, 1}, "No valid recipients")
	}
	discard, reason, err := r.chain.Message(ctx, msg)
	if err != nil {
		return nil, err
	}
	data, err := msg.Bytes()
	if err != nil {
		return nil, &pipeline.Error{Code: 554, Enhanced: pipeline.EnhancedCode{5, 6, 0}, Message: "Message cannot be serialised", Cause: err}
	}
	p := &prepared{receipt: &Receipt{MessageID: msg.ID}}
	if discard {
		p.receipt.Discarded = true
		for _, rc := range msg.Recipients {
			ev := r.event(pipeline.EventDiscarded, msg, rc.Address, len(data))
			ev.Response = &pipeline.Response{Code: 250, Enhanced: "2.0.0", Text: reason}
			b.AddEvent(ev)
			p.receipt.Recipients = append(p.receipt.Recipients, RcptResult{Address: rc.Address, Status: StatusDiscarded})
		}
		return p, nil
	}

	var (
		firstErr *pipeline.Error
		tempErr  error // first temporary route failure
		refused  []queue.Failure
		pending  []*pipeline.Event
	)
	for i, rc := range msg.Recipients {
		route, drop, err := r.chain.Route(ctx, msg, rc)
		switch {
		case err != nil:
			rep := pipeline.Reply(err)
			if firstErr == nil {
				firstErr = &rep
			}
			ev := r.event(pipeline.EventRejected, msg, rc.Address, len(data))
			ev.Response = pipeline.ResponseOf(err)
			pending = append(pending, ev)
			p.receipt.Recipients = append(p.receipt.Recipients, RcptResult{Address: rc.Address, Status: StatusRejected, Err: &rep})
			if !rep.Temporary() {
				refused = append(refused, queue.Failure{Recipient: rc.Address, Reply: ev.Response})
			} else if tempErr == nil {
				tempErr = err
			}
		case drop:
			ev := r.event(pipeline.EventDiscarded, msg, rc.Address, len(data))
			pending = append(pending, ev)
			p.receipt.Recipients = append(p.receipt.Recipients, RcptResult{Address: rc.Address, Status: StatusDiscarded})
		default:
			rc.Route = route
			sr := &spool.Recipient{MsgID: msg.ID, Idx: i, Address: rc.Address, Domain: rc.Domain, Route: route}
			p.rcpts = append(p.rcpts, sr)
			ev := r.event(pipeline.EventReceived, msg, rc.Address, len(data))
			ev.Queue = route.QueueName(rc.Domain)
			pending = append(pending, ev)
			p.receipt.Recipients = append(p.receipt.Recipients, RcptResult{Address: rc.Address, Status: StatusQueued})
		}
	}
	if o.BounceRouteRejects && tempErr != nil {
		// SMTP answers DATA once for all recipients: a recipient that can
		// neither be queued nor bounced makes the whole message a 4xx, so
		// the client retries it; nothing is staged.
		return nil, tempErr
	}
	p.receipt.Queued = len(p.rcpts)
	allDiscarded := len(p.rcpts) == 0 && firstErr == nil
	if len(p.rcpts) == 0 && !allDiscarded {
		// Nothing to queue: the whole message is refused with the first
		// recipient's reply, and only "rejected" events are recorded.
		for _, ev := range pending {
			b.AddEvent(ev)
		}
		return p, firstErr
	}
	identity := ""
	if msg.Conn.Identity != nil {
		identity = msg.Conn.Identity.Name
	}
	p.meta = &spool.Meta{
		ID: msg.ID, Source: msg.Conn.Source, Sender: msg.Sender, Tenant: msg.Conn.Tenant(), Identity: identity,
		Tags: msg.Tags, Meta: msg.Meta, Received: msg.Received, Size: len(data),
	}
	// BeforeCommit runs before anything of this message is staged, so its
	// failure leaves the batch untouched.
	if o.BeforeCommit != nil {
		if err := o.BeforeCommit(b, msg, p.receipt); err != nil {
			return nil, err
		}
	}
	if len(p.rcpts) > 0 {
		if err := b.PutMessage(p.meta, data); err != nil {
			return nil, err
		}
		for _, sr := range p.rcpts {
			if err := b.PutRecipient(sr); err != nil {
				return nil, err
			}
		}
	}
	for _, ev := range pending {
		b.AddEvent(ev)
	}
	if o.BounceRouteRejects && len(refused) > 0 {
		p.bMeta, p.bRcpts = r.q.AddBounce(b, p.meta, data, refused)
	}
	return p, nil
}

// Submit accepts one message: stages, one synced spool commit, enqueue.
// On error nothing was queued (only "rejected" events may be recorded).
func (r *Relay) Submit(ctx context.Context, msg *pipeline.Message, o Options) (*Receipt, error) {
	if !r.enter() {
		return nil, ErrClosed
	}
	defer r.inflight.Done()
	b := r.sp.NewBatch()
	p, err := r.stage(ctx, b, msg, o)
	if err != nil {
		if !b.Empty() { // only the "rejected" events of a refused message
			if cerr := b.Commit(false); cerr != nil {
				r.log.Warn("cannot record rejected events", "msgid", msg.ID, "err", cerr)
			}
		} else {
			b.Discard()
		}
		return receiptOf(p), err
	}
	if err := b.Commit(true); err != nil {
		r.log.Error("spool commit failed; message refused", "msgid", msg.ID, "err", err)
		return nil, &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 3, 0}, Message: "Cannot store the message now, try again later", Cause: err}
	}
	r.enqueue(p)
	return p.receipt, nil
}

// stage prepares msg in a batch of its own and merges it into b only when
// complete; on error b receives at most the message's "rejected" events.
func (r *Relay) stage(ctx context.Context, b *spool.Batch, msg *pipeline.Message, o Options) (*prepared, error) {
	mb := r.sp.NewBatch()
	p, err := r.prepare(ctx, mb, msg, o)
	if err != nil && p == nil {
		mb.Discard() // failed before or while staging: nothing of it is kept
		return nil, err
	}
	// Either complete, or refused with only its "rejected" events staged.
	if merr := b.Merge(mb); merr != nil {
		return nil, merr
	}
	return p, err
}

func receiptOf(p *prepared) *Receipt {
	if p == nil {
		return nil
	}
	return p.receipt
}

func (r *Relay) enqueue(p *prepared) {
	if len(p.rcpts) > 0 {
		r.q.Enqueue(p.meta, p.rcpts)
	}
	if p.bMeta != nil {
		r.q.Enqueue(p.bMeta, p.bRcpts)
	}
}

// BatchResult is one message's outcome in SubmitBatch.
type BatchResult struct {
	Receipt *Receipt
	Err     error
}

// SubmitBatch accepts several messages with one synced commit. Each
// message's stages run independently; a refused message does not affect
// the others. If the commit fails, every message fails.
func (r *Relay) SubmitBatch(ctx context.Context, msgs []*pipeline.Message, o Options) []BatchResult {
	out := make([]BatchResult, len(msgs))
	if !r.enter() {
		for i := range out {
			out[i].Err = ErrClosed
		}
		return out
	}
	defer r.inflight.Done()
	b := r.sp.NewBatch()
	var ok []*prepared
	for i, msg := range msgs {
		p, err := r.stage(ctx, b, msg, o)
		out[i] = BatchResult{Receipt: receiptOf(p), Err: err}
		if err == nil {
			ok = append(ok, p)
		}
	}
	if b.Empty() {
		b.Discard()
		return out
	}
	if err := b.Commit(true); err != nil {
		r.log.Error("spool commit failed; batch refused", "err", err)
		ferr := &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 3, 0}, Message: "Cannot store the messages now, try again later", Cause: err}
		for i := range out {
			out[i] = BatchResult{Err: ferr}
		}
		return out
	}
	for _, p := range ok {
		r.enqueue(p)
	}
	return out
}

// Rejected records a "rejected" event for a recipient (or, with rcpt "",
// a transaction) refused before the message was complete.
func (r *Relay) Rejected(ctx context.Context, txn *pipeline.Txn, rcpt string, err error) {
	if !r.enter() {
		return
	}
	defer r.inflight.Done()
	ev := &pipeline.Event{Type: pipeline.EventRejected, MessageID: txn.ID, Recipient: rcpt, Sender: txn.Sender,
		Response: pipeline.ResponseOf(err), Tags: txn.Tags, Metadata: txn.Meta}
	if txn.Conn != nil {
		ev.Source, ev.Tenant = txn.Conn.Source, txn.Conn.Tenant()
	}
	b := r.sp.NewBatch()
	b.AddEvent(ev)
	if cerr := b.Commit(false); cerr != nil && !errors.Is(cerr, context.Canceled) {
		r.log.Warn("cannot record rejected event", "msgid", txn.ID, "err", cerr)
	}
}
