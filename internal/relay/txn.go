package relay

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-mta/sluice/internal/mailtext"
	"github.com/sluice-mta/sluice/pipeline"
)

// Session is one client: an SMTP connection, or one HTTP request. Its
// methods run the session hooks on the current pipeline and log refusals;
// they return errors for the source to answer with (pipeline.Reply).
// A Session is used by one goroutine at a time.
type Session struct {
	r    *Relay
	Conn *pipeline.Conn
	// bounce: a session of Sluice's own DSNs. Their temporary refusals
	// are not recorded: such a bounce is sent anyway (see Relay.bounce).
	bounce bool
	// accepted is this session's child of sluice_messages_accepted_total,
	// resolved at its first accepted message (nil: not yet, or no metrics).
	accepted prometheus.Counter
}

// countAccepted counts one accepted message of this session.
func (s *Session) countAccepted() {
	if s.r.metrics == nil {
		return
	}
	if s.accepted == nil {
		s.accepted = s.r.metrics.Accepted.WithLabelValues(s.Conn.Source, s.Conn.Listener)
	}
	s.accepted.Inc()
}

// record writes refusal events for this session.
func (s *Session) record(err error, evs ...*pipeline.Event) {
	if s.bounce && pipeline.IsTemporary(err) {
		return
	}
	s.r.record(evs...)
}

// NewSession starts a session for conn. conn.ID is filled when empty.
func (r *Relay) NewSession(conn *pipeline.Conn) *Session {
	if conn.ID == "" {
		conn.ID = r.store.NewID()
	}
	return &Session{r: r, Conn: conn}
}

// Connect runs on_connect.
func (s *Session) Connect(ctx context.Context) error {
	p := s.r.acquire()
	defer p.release()
	if err := p.Chain.Connect(ctx, s.Conn); err != nil {
		s.r.logRefusal("connection refused", s.Conn, err)
		return err
	}
	return nil
}

// Helo runs on_helo for name. On success conn.HELO is name; on a refusal
// it keeps the last accepted name (so the refused one is checked again).
func (s *Session) Helo(ctx context.Context, name string) error {
	p := s.r.acquire()
	defer p.release()
	prev := s.Conn.HELO
	s.Conn.HELO = name // stages read conn.helo during on_helo
	if err := p.Chain.Helo(ctx, s.Conn, name); err != nil {
		s.Conn.HELO = prev
		s.r.logRefusal("helo refused", s.Conn, err, "helo", name)
		return err
	}
	return nil
}

// Auth runs on_auth for credentials the source could not verify itself
// (SMTP AUTH). On success conn.Identity is the identity.
func (s *Session) Auth(ctx context.Context, cr *pipeline.Credentials) (*pipeline.Identity, error) {
	p := s.r.acquire()
	defer p.release()
	id, err := p.Chain.Auth(ctx, s.Conn, cr)
	if err != nil {
		s.r.logRefusal("authentication refused", s.Conn, err, "user", cr.Username, "mechanism", cr.Mechanism)
		return nil, err
	}
	s.Conn.Identity = id
	return id, nil
}

// Verified runs on_auth for credentials the source verified itself (an
// HTTP API key): id stands unless a stage replaces or refuses it.
func (s *Session) Verified(ctx context.Context, cr *pipeline.Credentials, id *pipeline.Identity) (*pipeline.Identity, error) {
	p := s.r.acquire()
	defer p.release()
	nid, err := p.Chain.Verified(ctx, s.Conn, cr, id)
	if err != nil {
		s.r.logRefusal("identity refused", s.Conn, err, "identity", id.Name)
		return nil, err
	}
	return nid, nil
}

// Txn is one mail transaction from MAIL to commit. It holds a reference
// on the pipeline it began on until Commit, Refuse or Abort ends it; the
// source must call one of them. Begin, Rcpt, Prepare, Commit and Refuse
// are called from one goroutine; Abort may be called from another at any
// time (go-smtp resets a session while a BDAT Data goroutine runs): it
// ends an idle transaction and leaves one being committed to finish.
type Txn struct {
	s     *Session
	p     *Pipeline
	T     *pipeline.Txn
	bad   map[string]bool // recipients already recorded as rejected
	state atomic.Int32    // txnOpen, txnBusy, txnEnded
}

const (
	txnOpen  = iota // between Begin and Prepare/Refuse
	txnBusy         // being prepared or committed: only the committer ends it
	txnEnded        // the pipeline reference is released
)

// Begin starts a transaction from sender ("" is the null sender) and runs
// on_mail. tags and meta (may be nil) are the source's (HTTP request
// fields). Set t.T.Params (MAIL FROM parameters) through BeginWith. On a refusal it records one transaction-level "rejected" event
// and returns the error with a Txn that has already ended (only its ID is
// of use: the message id of the refusal).
func (s *Session) Begin(ctx context.Context, sender string, tags []string, meta map[string]string) (*Txn, error) {
	return s.BeginWith(ctx, sender, pipeline.MailParams{}, tags, meta)
}

// BeginWith is Begin with the MAIL FROM parameters, which on_mail sees in
// txn.Params and which travel with the message.
//
// sender is parsed by pipeline.ParseSender and kept in its canonical form
// (quoting included). A sender that is not an address (501 5.1.7) or whose
// local part could route (553 5.1.7) is a syntax error, not a refusal: it
// is logged, not recorded, and on_mail does not run. A sender the
// session's identity may not use (senders.go) is refused with a
// *SenderError (550 5.7.1) before on_mail, logged and recorded.
func (s *Session) BeginWith(ctx context.Context, sender string, params pipeline.MailParams, tags []string, meta map[string]string) (*Txn, error) {
	r := s.r
	canon, err := pipeline.ParseSender(sender)
	if err != nil {
		txn := &pipeline.Txn{Conn: s.Conn, ID: r.store.NewID(), Sender: sender, Params: params, Received: r.now(), Tags: tags, Meta: meta}
		r.logRefusal("sender refused", s.Conn, err, "msgid", txn.ID, "from", sender)
		t := &Txn{s: s, T: txn}
		t.state.Store(txnEnded)
		return t, err
	}
	sender = canon
	p := r.acquire()
	txn := &pipeline.Txn{Conn: s.Conn, ID: r.store.NewID(), Sender: sender, Params: params, Received: r.now(), Tags: tags, Meta: meta}
	// Sender authorization (senders.go) comes first: on_mail sees only
	// senders the identity may use.
	err = CheckEnvelopeSender(s.Conn.Identity, sender)
	if err == nil {
		err = r.checkSenderDomain(ctx, s.Conn, sender)
	}
	if err == nil {
		err = p.Chain.Mail(ctx, txn)
	}
	if err != nil {
		p.release()
		if ctx.Err() == nil {
			r.logRefusal("sender refused", s.Conn, err, "msgid", txn.ID, "from", sender)
			s.record(err, r.rejected(txn, "", err))
		}
		t := &Txn{s: s, p: p, T: txn}
		t.state.Store(txnEnded)
		return t, err
	}
	return &Txn{s: s, p: p, T: txn}, nil
}

// ID returns the message id.
func (t *Txn) ID() string { return t.T.ID }

// Chain returns the pipeline the transaction runs on.
func (t *Txn) Chain() *pipeline.Chain { return t.p.Chain }

// Rcpt parses addr and runs on_rcpt (relay control included). A recipient
// already accepted is accepted again without running the hooks
// (dup true). On a refusal it records a "rejected" event for addr and
// returns the error; the transaction goes on. A recipient on the
// suppression list of the session's tenant (Options.Suppressions) is
// refused after on_rcpt with a *SuppressedError (550 5.7.1) and a
// "suppressed" event instead. An address that does not
// parse is a syntax error, not a recipient: it is logged, not recorded.
func (t *Txn) Rcpt(ctx context.Context, addr string) (dup bool, err error) {
	return t.RcptWith(ctx, addr, pipeline.RcptParams{})
}

// RcptWith is Rcpt with the RCPT TO parameters (DSN NOTIFY, ORCPT), which
// on_rcpt sees in rcpt.Params and which travel with the recipient.
func (t *Txn) RcptWith(ctx context.Context, addr string, params pipeline.RcptParams) (dup bool, err error) {
	r := t.s.r
	rc, err := pipeline.NewRecipient(addr)
	if err == nil {
		rc.Params = params
	}
	if err != nil {
		r.logRefusal("recipient refused", t.s.Conn, err, "msgid", t.T.ID, "rcpt", addr)
		return false, err
	}
	{
		for _, have := range t.T.Recipients {
			if have.Local == rc.Local && have.Domain == rc.Domain {
				return true, nil
			}
		}
		err = t.p.Chain.Rcpt(ctx, t.T, rc)
	}
	if err != nil {
		if ctx.Err() == nil {
			r.logRefusal("recipient refused", t.s.Conn, err, "msgid", t.T.ID, "rcpt", addr)
			t.refused(err, r.rejected(t.T, addr, err))
		}
		return false, err
	}
	if err := t.checkSuppressed(ctx, addr, rc); err != nil {
		return false, err // logged and recorded ("suppressed")
	}
	t.T.Recipients = append(t.T.Recipients, rc)
	return false, nil
}

func (t *Txn) refused(err error, ev *pipeline.Event) {
	if t.bad == nil {
		t.bad = map[string]bool{}
	}
	t.bad[ev.Recipient] = true
	t.s.record(err, ev)
}

// Refuse ends the transaction refused as a whole by the source (data too
// big, malformed, bare line endings ...): it logs once and records a
// "rejected" event for each recipient. It returns err.
func (t *Txn) Refuse(ctx context.Context, size int, err error) error {
	if !t.state.CompareAndSwap(txnOpen, txnBusy) {
		return err
	}
	t.finish()
	if ctx.Err() != nil {
		return err
	}
	r := t.s.r
	r.logRefusal("message refused", t.s.Conn, err, "msgid", t.T.ID, "from", t.T.Sender, "rcpts", len(t.T.Recipients), "size", size)
	t.s.record(err, t.rejectAll(err)...)
	return err
}

// rejectAll is a "rejected" event for every recipient not yet refused
// (the transaction, when there is none).
func (t *Txn) rejectAll(err error) []*pipeline.Event {
	r := t.s.r
	var evs []*pipeline.Event
	for _, rc := range t.T.Recipients {
		if !t.bad[rc.Address] {
			evs = append(evs, r.rejected(t.T, rc.Address, err))
		}
	}
	if len(t.T.Recipients) == 0 && len(t.bad) == 0 {
		evs = append(evs, r.rejected(t.T, "", err))
	}
	return evs
}

// Abort ends the transaction without recording anything (the client
// reset it or went away). Safe to call at any time, more than once; a
// transaction being committed is left to finish.
func (t *Txn) Abort() {
	if t.state.CompareAndSwap(txnOpen, txnEnded) {
		t.p.release()
	}
}

// finish ends a busy transaction (its committer calls it once).
func (t *Txn) finish() {
	if t.state.CompareAndSwap(txnBusy, txnEnded) {
		t.p.release()
	}
}

// received adds the Received trace field (RFC 5321 section 4.4).
func (t *Txn) received(msg *pipeline.Message) {
	c := t.s.Conn
	if c.Source == pipeline.SourceDSN {
		return // our own report: no hop to trace
	}
	by := c.ServerName
	if by == "" {
		by = t.s.r.hostname
	}
	tr := mailtext.Trace{Source: c.Source, HELO: c.HELO, RemoteIP: c.RemoteIP, By: by, TLS: c.TLS != "",
		ID: t.T.ID, Date: t.T.Received}
	if c.Identity != nil {
		tr.Auth = c.Identity.Name
	}
	if len(t.T.Recipients) == 1 {
		tr.For = t.T.Recipients[0].Address
	}
	// Formatted (and folded) once, not at every write of the header.
	pipeline.AddHeaderField(&msg.Header, "Received", mailtext.Received(tr))
}

// Commit accepts the message: the Received field, on_message, on_route,
// one synced write, the queue. msg.Txn must be t.T. It ends the
// transaction. On error the message was not accepted (some recipients may
// have been refused with events; the others get "rejected" events too,
// unless ctx ended: the client is gone and nothing was refused).
//
// msg and its Body may alias the source's buffers: they are not used
// after Commit returns.
func (t *Txn) Commit(ctx context.Context, msg *pipeline.Message, o CommitOptions) (*Receipt, error) {
	acc, err := t.Prepare(ctx, msg, o)
	if err != nil {
		return receiptOf(acc), err
	}
	res := t.s.r.commit(ctx, []*Txn{t}, []*Accepted{acc}, o)
	return res[0].Receipt, res[0].Err
}

// CommitOptions configures Commit and Prepare.
type CommitOptions struct {
	// OneReply: the source answers the whole message with one reply
	// (SMTP DATA). Recipients refused permanently at on_route then get a
	// DSN, and a temporary refusal of any recipient makes the whole
	// message a 4xx so the client retries it. Without it (HTTP) each
	// recipient's outcome is reported.
	OneReply bool
	// BeforeCommit, when set, runs for each message in its batch.
	BeforeCommit BeforeCommit
}

func receiptOf(acc *Accepted) *Receipt {
	if acc == nil {
		return nil
	}
	return acc.Receipt
}

// Prepare runs the message through on_message and on_route without
// committing (Relay.CommitBatch commits several at once). On error the
// transaction has ended refused. A From header field the session's
// identity may not use (senders.go) refuses the message first with a
// *SenderError (550 5.7.1).
func (t *Txn) Prepare(ctx context.Context, msg *pipeline.Message, o CommitOptions) (*Accepted, error) {
	if len(t.T.Recipients) == 0 {
		return nil, t.Refuse(ctx, len(msg.Body), errNoRecipients)
	}
	if err := CheckFromHeader(t.s.Conn.Identity, msg.Header.Values("From")); err != nil {
		return nil, t.Refuse(ctx, len(msg.Body), err)
	}
	if !t.state.CompareAndSwap(txnOpen, txnBusy) {
		return nil, errors.New("relay: transaction already ended")
	}
	t.received(msg)
	acc, evs, err := t.s.r.prepare(ctx, t.p.Chain, msg, o)
	for _, ev := range evs { // recipients refused or dropped at on_route
		if ev.Type == pipeline.EventRejected {
			if t.bad == nil {
				t.bad = map[string]bool{}
			}
			t.bad[ev.Recipient] = true
		}
	}
	if err != nil {
		t.finish()
		if ctx.Err() != nil {
			return nil, err
		}
		r := t.s.r
		r.logRefusal("message refused", t.s.Conn, err, "msgid", t.T.ID, "from", t.T.Sender, "rcpts", len(t.T.Recipients))
		t.s.record(err, append(evs, t.rejectAll(err)...)...)
		if acc != nil {
			return acc, err
		}
		return nil, err
	}
	return acc, nil
}

var errNoRecipients = pipeline.Errorf(554, pipeline.EnhancedCode{5, 5, 1}, "No valid recipients")

// BatchResult is one message's outcome in CommitBatch.
type BatchResult struct {
	Receipt *Receipt
	Err     error
}

// CommitBatch commits prepared messages (accs[i] from txns[i].Prepare)
// with one synced write. If the write fails every message fails.
func (r *Relay) CommitBatch(ctx context.Context, txns []*Txn, accs []*Accepted, o CommitOptions) []BatchResult {
	return r.commit(ctx, txns, accs, o)
}

func (r *Relay) commit(ctx context.Context, txns []*Txn, accs []*Accepted, o CommitOptions) []BatchResult {
	out := make([]BatchResult, len(accs))
	defer func() {
		for _, t := range txns {
			t.finish()
		}
	}()
	if !r.enter() {
		for i := range out {
			out[i].Err = ErrClosed
		}
		return out
	}
	defer r.inflight.Done()
	var write []*Accepted
	for _, a := range accs {
		if a.Meta != nil || len(a.Events) > 0 {
			write = append(write, a)
		}
	}
	if len(write) > 0 {
		var err, refused error
		if r.admit != nil {
			refused = r.admit()
			err = refused
		}
		if err == nil {
			start := time.Now()
			err = r.store.Commit(ctx, write, o.BeforeCommit)
			if r.metrics != nil {
				r.metrics.SpoolCommitSeconds.Observe(time.Since(start).Seconds())
			}
		}
		if err != nil {
			ferr := &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 3, 0}, Message: "Cannot store the message now, try again later", Cause: err}
			if pe := (*pipeline.Error)(nil); refused != nil && errors.As(refused, &pe) {
				ferr = pe // logged by whoever refused (rate-limited)
			} else if errors.Is(err, pipeline.ErrSpoolFull) {
				// The spool logs entering and leaving the full state once.
				r.log.Debug("spool full; message refused", "msgid", accs[0].Msg.ID, "n", len(accs), "err", err)
				ferr = &pipeline.Error{Code: 452, Enhanced: pipeline.ErrSpoolFull.Enhanced, Message: pipeline.ErrSpoolFull.Message, Cause: err}
			} else {
				r.log.Error("spool commit failed; message refused", "msgid", accs[0].Msg.ID, "n", len(accs), "err", err)
			}
			var evs []*pipeline.Event
			for i := range out {
				out[i].Err = ferr
				if i < len(txns) {
					evs = append(evs, txns[i].rejectAll(ferr)...)
					if ctx.Err() == nil {
						r.countRefusal("message refused", txns[i].s.Conn, ferr, ferr.Code)
					}
				}
			}
			if ctx.Err() == nil {
				if rerr := r.store.Record(evs); rerr != nil {
					r.recordFailed(rerr, "")
				}
			}
			return out
		}
	}
	logged := r.log.Enabled(ctx, slog.LevelInfo)
	for i, a := range accs {
		out[i].Receipt = a.Receipt
		if i < len(txns) && a.Receipt != nil && (a.Receipt.Queued > 0 || a.Receipt.Discarded) {
			txns[i].s.countAccepted()
		}
		if !logged {
			continue
		}
		t := txns[i]
		c := t.s.Conn
		attrs := []any{"source", c.Source, "conn", c.ID, "msgid", t.T.ID, "from", t.T.Sender, "rcpts", len(t.T.Recipients),
			"queued", a.Receipt.Queued, "discarded", a.Receipt.Discarded, "size", a.Size(), "remote_ip", c.RemoteIP.String()}
		if c.Listener != "" {
			attrs = append(attrs, "listener", c.Listener)
		}
		if c.TLS != "" {
			attrs = append(attrs, "tls", c.TLS)
		}
		if c.Identity != nil {
			attrs = append(attrs, "identity", c.Identity.Name, "tenant", c.Identity.Tenant)
		}
		r.log.Info("message accepted", attrs...)
	}
	return out
}

// rejected is the "rejected" event of rcpt ("" for the transaction).
func (r *Relay) rejected(txn *pipeline.Txn, rcpt string, err error) *pipeline.Event {
	ev := &pipeline.Event{Type: pipeline.EventRejected, MessageID: txn.ID, Recipient: rcpt, Sender: txn.Sender,
		Response: pipeline.ResponseOf(err), Tags: txn.Tags, Metadata: txn.Meta, RequireTLS: txn.Params.RequireTLS}
	if txn.Conn != nil {
		ev.Source, ev.Tenant = txn.Conn.Source, txn.Conn.Tenant()
	}
	return ev
}
