package relay

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/internal/dsn"
	"github.com/sluice-mta/sluice/internal/mailtext"
	"github.com/sluice-mta/sluice/internal/queue"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

var _ queue.Bouncer = (*Relay)(nil)

// Notifier is what the queue calls once per outcome batch (see Notify).
// The queue declares the same interface; this guard keeps the signature.
type Notifier interface {
	Notify(ctx context.Context, b *spool.Batch, m *spool.Meta, body func() ([]byte, error), notes []dsn.Notice) (*spool.Meta, []*spool.Recipient)
}

var _ Notifier = (*Relay)(nil)

// Notify is the queue's one call about DSNs, made once per outcome batch
// with one dsn.Notice per recipient of the attempt (delivered, deferred,
// bounced or expired). It decides which recipients get a report and
// builds at most one, for all of them (RFC 3461 section 5.2.8):
//
//   - Failed: a "failed" entry unless the recipient's NOTIFY excludes
//     FAILURE (NEVER, or a list without FAILURE).
//   - Delayed: a "delayed" entry when a warning is due: NOTIFY includes
//     DELAY or was not given, Options.DelayWarning is not zero, the
//     message arrived at least DelayWarning ago, and the recipient was
//     not warned in the last DelayWarning (Rcpt.Warned). Notify then sets
//     Rcpt.Warned and puts Rcpt into b again, so the mark commits with the
//     warning (and counts even when a stage refuses the warning, so a
//     refusal is not repeated at every retry).
//   - Delivered: with NOTIFY=SUCCESS, "relayed" when the next hop did not
//     take over DSN responsibility, nothing when it did (HopDSN: it
//     reports), "delivered" when the delivery was final (Final).
//
// The report goes to m's original sender, never to the null sender (a
// message from <> gets no DSN of any kind), returns the message in full
// when the sender asked with RET=FULL (up to dsn.MaxReturn bytes) and
// carries its ENVID and each recipient's ORCPT. body is called only when
// a report is built; it returns m's bytes (an error is logged and the
// report goes without them). Like Bounce, the report enters through the
// front door and is staged into b; Notify returns what to Enqueue once b
// commits (nils when no report is sent).
func (r *Relay) Notify(ctx context.Context, b *spool.Batch, m *spool.Meta, body func() ([]byte, error), notes []dsn.Notice) (*spool.Meta, []*spool.Recipient) {
	acc := r.notify(ctx, b, m, body, notes)
	return r.stage(b, m, acc)
}

// Bounce implements queue.Bouncer: it builds the DSN for the failed
// recipients of m (whose bytes are data), passes it through the pipeline
// like any message (see bounce) and stages it into b, the batch that
// records the failures. It returns what to enqueue once b commits (nils
// when no bounce is sent).
//
// A queue.Failure carries no RCPT TO parameters, so Bounce reports every
// failure as if NOTIFY had not been given (FAILURE) and without ORCPT.
// The queue should call Notify instead, with the spooled recipients, so
// that NOTIFY=NEVER and ORCPT are honoured; Bounce stays for callers that
// have no recipient at hand.
func (r *Relay) Bounce(ctx context.Context, b *spool.Batch, m *spool.Meta, data []byte, failed []queue.Failure) (*spool.Meta, []*spool.Recipient) {
	notes := make([]dsn.Notice, 0, len(failed))
	for _, f := range failed {
		notes = append(notes, dsn.Notice{Outcome: dsn.Failed, Rcpt: &spool.Recipient{Address: f.Recipient},
			Err: f.Err, Reply: f.Reply, Expired: f.Expired, Remote: f.Remote, Time: f.Time})
	}
	acc := r.notify(ctx, b, m, func() ([]byte, error) { return data, nil }, notes)
	return r.stage(b, m, acc)
}

// stage writes a report that notify built into b.
func (r *Relay) stage(b *spool.Batch, m *spool.Meta, acc *Accepted) (*spool.Meta, []*spool.Recipient) {
	if acc == nil {
		return nil, nil
	}
	if err := Stage(b, acc); err != nil {
		r.log.Error("cannot stage a DSN; none sent", "dsn_of", m.ID, "err", err)
		return nil, nil
	}
	if acc.Meta == nil {
		return nil, nil
	}
	r.log.Info("dsn queued", "msgid", acc.Meta.ID, "dsn_of", m.ID, "action", acc.Meta.Meta["dsn_action"], "to", m.Sender)
	return acc.Meta, acc.Rcpts
}

// notify applies NOTIFY and the delay-warning policy to notes and builds
// and submits the report (see Notify). b may be nil (a report committed
// with the message at acceptance): then no Warned mark is written.
func (r *Relay) notify(ctx context.Context, b *spool.Batch, m *spool.Meta, body func() ([]byte, error), notes []dsn.Notice) *Accepted {
	if m.Sender == "" || len(notes) == 0 {
		return nil
	}
	var rcpts []dsn.Recipient
	for i := range notes {
		n := &notes[i]
		if n.Rcpt == nil {
			continue
		}
		t := n.Time
		if t.IsZero() {
			t = r.now()
		}
		var rc dsn.Recipient
		switch n.Outcome {
		case dsn.Failed:
			if !dsn.Wants(n.Rcpt.Params.Notify, dsn.ActionFailed) {
				r.log.Debug("no failure DSN: NOTIFY", "msgid", m.ID, "rcpt", n.Rcpt.Address, "notify", n.Rcpt.Params.Notify)
				continue
			}
			rc = failedRecipient(n)
		case dsn.Delayed:
			if !r.warningDue(m, n, t) {
				continue
			}
			n.Rcpt.Warned = t
			if b != nil && n.Rcpt.MsgID != "" {
				if err := b.PutRecipient(n.Rcpt); err != nil {
					r.log.Error("cannot record a delay warning; none sent", "msgid", m.ID, "rcpt", n.Rcpt.Address, "err", err)
					continue
				}
			}
			rc = delayedRecipient(n)
		case dsn.Delivered:
			action := dsn.ActionRelayed
			if n.Final {
				action = dsn.ActionDelivered
			}
			if !dsn.Wants(n.Rcpt.Params.Notify, action) {
				continue
			}
			if !n.Final && n.HopDSN {
				// RFC 3461 5.2.1: the next hop took NOTIFY with the
				// recipient; its success report is the one to send.
				continue
			}
			rc = dsn.Recipient{Address: n.Rcpt.Address, Action: action, Status: "2.0.0", RemoteMTA: n.Remote}
		default:
			continue
		}
		rc.OriginalRecipient = n.Rcpt.Params.ORCPT
		rc.LastAttempt = t
		rcpts = append(rcpts, rc)
	}
	if len(rcpts) == 0 {
		return nil
	}
	var data []byte
	if body != nil {
		var err error
		if data, err = body(); err != nil {
			r.log.Error("cannot read the message for its DSN; sending it without", "dsn_of", m.ID, "err", err)
			data = nil
		}
	}
	rep := dsn.Report{ReportingMTA: r.hostname, Sender: m.Sender, MessageID: m.ID, EnvelopeID: m.Params.EnvID,
		Arrival: m.Received, Header: data, Recipients: rcpts,
		// RFC 8689 section 5: a report about a REQUIRETLS message
		// returns the header only, as if RET=HDRS, whatever RET said.
		ReturnFull: strings.EqualFold(m.Params.Ret, "FULL") && !m.Params.RequireTLS}
	acc := r.bounce(ctx, m, rep)
	for i := range notes {
		if rt := notes[i].Rcpt; rt != nil && rt.Route != nil && rt.Route.Kind == pipeline.RouteCapture {
			// A report about captured mail is captured too: nothing
			// about a sandbox leaves the machine.
			captureAccepted(acc, rt.Route.Tenant)
			break
		}
	}
	return acc
}

// captureAccepted routes every recipient of acc (nil: none) to tenant's
// sandbox inbox.
func captureAccepted(acc *Accepted, tenant string) {
	if acc == nil {
		return
	}
	route := pipeline.Capture(tenant)
	for _, rc := range acc.Rcpts {
		rc.Route = route
	}
	for _, ev := range acc.Events {
		if ev.Type == pipeline.EventReceived {
			ev.Queue = route.QueueName("")
		}
	}
}

// warningDue is the delay-warning policy for one deferred recipient at t.
func (r *Relay) warningDue(m *spool.Meta, n *dsn.Notice, t time.Time) bool {
	every := r.delayWarning
	switch {
	case every <= 0, !dsn.Wants(n.Rcpt.Params.Notify, dsn.ActionDelayed):
		return false
	case t.Sub(m.Received) < every:
		return false
	case !n.Rcpt.Warned.IsZero() && t.Sub(n.Rcpt.Warned) < every:
		return false
	case !n.RetryUntil.IsZero() && !t.Before(n.RetryUntil):
		return false // it expires now: the failure report follows
	}
	return true
}

// failedRecipient is the DSN entry of one failure. The diagnostic code is
// "smtp; ..." only for what a remote server replied; what Sluice decided
// itself (DNS, connection, policy, expiry) is "x-sluice; ...".
func failedRecipient(n *dsn.Notice) dsn.Recipient {
	rc := fromError(n)
	rc.Action = dsn.ActionFailed
	if n.Expired || rc.Status == "" || rc.Status[0] != '5' {
		// The last reply was temporary; the DSN reports a permanent
		// failure: delivery time expired (RFC 3463: 5.4.7).
		rc.Status = "5.4.7"
	}
	return rc
}

// delayedRecipient is the DSN entry of a delay warning.
func delayedRecipient(n *dsn.Notice) dsn.Recipient {
	rc := fromError(n)
	rc.Action = dsn.ActionDelayed
	if rc.Status == "" || rc.Status[0] != '4' {
		rc.Status = "4.0.0"
	}
	rc.WillRetryUntil = n.RetryUntil
	return rc
}

// fromError is a DSN entry from the notice's error or recorded reply.
func fromError(n *dsn.Notice) dsn.Recipient {
	addr := n.Rcpt.Address
	switch {
	case n.Err != nil:
		return dsn.RecipientFromError(addr, n.Err)
	case n.Reply != nil:
		return dsn.Recipient{Address: addr, Status: n.Reply.Enhanced,
			DiagnosticCode: fmt.Sprintf("x-sluice; %d %s %s", n.Reply.Code, n.Reply.Enhanced, n.Reply.Text)}
	}
	return dsn.Recipient{Address: addr}
}

// bounce builds the report rep about m and submits it through the front
// door: a new message from the null sender to m's sender, source "dsn",
// run through on_mail, on_rcpt, on_message and on_route like any other
// (so it is signed, rewritten and routed by the same stages), with
// "received" (or "rejected"/"discarded") events of its own. Its metadata
// says what it reports on: dsn_of (m's id) and dsn_action (the actions,
// "failed", "delayed,failed", "relayed" ...), and bounce_of (m's id) when
// it reports a failure. It returns the DSN ready to write, nil when none
// is due.
//
// A stage that refuses the DSN permanently or discards it means no DSN
// (logged and recorded). A temporary failure (a stage error, a tempfail)
// must not lose it: it is queued as built, routed by MX, and the failure
// is logged.
func (r *Relay) bounce(ctx context.Context, m *spool.Meta, rep dsn.Report) *Accepted {
	if m.Sender == "" || len(rep.Recipients) == 0 {
		return nil
	}
	out, err := dsn.Build(rep)
	if err != nil {
		r.log.Error("cannot build a DSN; none sent", "dsn_of", m.ID, "err", err)
		return nil
	}
	meta := dsnMeta(m.ID, rep.Recipients)
	// The DSN's own MAIL FROM parameters: 8BITMIME when it carries 8-bit
	// text (a diagnostic, returned headers), SMTPUTF8 when the original
	// needed it (the returned header may be UTF-8) or the address is.
	// A report about a REQUIRETLS message requires TLS too (RFC 8689
	// section 5; it returns headers only, see ReturnFull above).
	params := pipeline.MailParams{SMTPUTF8: m.Params.SMTPUTF8 || !mailtext.IsASCII(m.Sender),
		RequireTLS: m.Params.RequireTLS}
	if mailtext.Has8Bit(out) {
		params.Body = pipeline.Body8BitMIME
	}
	conn := &pipeline.Conn{Source: pipeline.SourceDSN, ServerName: r.hostname,
		Identity: &pipeline.Identity{Name: "mailer-daemon", Tenant: m.Tenant, Method: "internal"}}
	s := r.NewSession(conn)
	s.bounce = true
	t, err := s.BeginWith(ctx, "", params, nil, meta)
	if err != nil {
		return r.bounceFailed(ctx, conn, "", m, out, params, meta, err)
	}
	defer t.Abort()
	if _, err := t.Rcpt(ctx, m.Sender); err != nil {
		return r.bounceFailed(ctx, conn, t.ID(), m, out, params, meta, err)
	}
	msg, err := pipeline.ParseMessage(t.T, out)
	if err != nil {
		r.log.Error("cannot parse our own DSN; none sent", "dsn_of", m.ID, "err", err)
		return nil
	}
	acc, err := t.Prepare(ctx, msg, CommitOptions{})
	if err != nil {
		return r.bounceFailed(ctx, conn, t.ID(), m, out, params, meta, err)
	}
	if acc.Meta == nil {
		r.log.Info("DSN discarded by the pipeline", "msgid", t.ID(), "dsn_of", m.ID, "sender", m.Sender)
	}
	return acc
}

// dsnMeta is the metadata of a DSN about message id.
func dsnMeta(id string, rcpts []dsn.Recipient) map[string]string {
	var actions []string
	seen := map[string]bool{}
	for _, rc := range rcpts {
		if !seen[rc.Action] {
			seen[rc.Action] = true
			actions = append(actions, rc.Action)
		}
	}
	sort.Strings(actions)
	meta := map[string]string{"dsn_of": id, "dsn_action": strings.Join(actions, ",")}
	if seen[dsn.ActionFailed] {
		meta["bounce_of"] = id
	}
	return meta
}

// bounceFailed handles a DSN the pipeline refused: permanently, no DSN
// (the refusal is already recorded); temporarily, the DSN as built, by MX.
func (r *Relay) bounceFailed(ctx context.Context, conn *pipeline.Conn, id string, m *spool.Meta, out []byte,
	params pipeline.MailParams, meta map[string]string, err error) *Accepted {
	if !pipeline.IsTemporary(err) {
		r.log.Info("DSN refused by the pipeline; none sent", "msgid", id, "dsn_of", m.ID, "sender", m.Sender, "err", err)
		return nil
	}
	r.log.Warn("the pipeline failed on a DSN; sending it as built, by MX", "msgid", id, "dsn_of", m.ID, "sender", m.Sender, "err", err)
	_, domain, serr := pipeline.SplitAddress(m.Sender)
	if serr != nil {
		r.log.Warn("sender address cannot receive a DSN", "dsn_of", m.ID, "sender", m.Sender)
		return nil
	}
	if id == "" {
		id = r.NewID()
	}
	route := pipeline.MX()
	bm := &spool.Meta{ID: id, Source: pipeline.SourceDSN, Sender: "", Tenant: m.Tenant, Identity: conn.Identity.Name,
		Received: r.now(), Size: len(out), Meta: meta, Params: params}
	rc := &spool.Recipient{MsgID: id, Idx: 0, Address: m.Sender, Domain: domain, Route: route}
	ev := &pipeline.Event{Type: pipeline.EventReceived, MessageID: id, Recipient: m.Sender, Source: pipeline.SourceDSN,
		Tenant: m.Tenant, Queue: route.QueueName(domain), Metadata: bm.Meta, Size: len(out), RequireTLS: params.RequireTLS}
	return &Accepted{Body: out, Meta: bm, Rcpts: []*spool.Recipient{rc}, Events: []*pipeline.Event{ev},
		Receipt: &Receipt{MessageID: id, Queued: 1}}
}
