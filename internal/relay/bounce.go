package relay

import (
	"context"
	"fmt"

	"github.com/sluice-mta/sluice/internal/dsn"
	"github.com/sluice-mta/sluice/internal/queue"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

var _ queue.Bouncer = (*Relay)(nil)

// Bounce implements queue.Bouncer: it builds the DSN for the failed
// recipients of m (whose bytes are data), passes it through the pipeline
// like any message (see bounce) and stages it into b, the batch that
// records the failures. It returns what to enqueue once b commits (nils
// when no bounce is sent).
func (r *Relay) Bounce(ctx context.Context, b *spool.Batch, m *spool.Meta, data []byte, failed []queue.Failure) (*spool.Meta, []*spool.Recipient) {
	acc := r.bounce(ctx, m, data, failed)
	if acc == nil {
		return nil, nil
	}
	if err := Stage(b, acc); err != nil {
		r.log.Error("cannot stage bounce; none sent", "bounce_of", m.ID, "err", err)
		return nil, nil
	}
	if acc.Meta == nil {
		return nil, nil
	}
	r.log.Info("bounce queued", "msgid", acc.Meta.ID, "bounce_of", m.ID, "to", m.Sender)
	return acc.Meta, acc.Rcpts
}

// dsnRecipient is the DSN entry of one failure. The diagnostic code is
// "smtp; ..." only for what a remote server replied; what Sluice decided
// itself (DNS, connection, policy, expiry) is "x-sluice; ...".
func dsnRecipient(f queue.Failure) dsn.Recipient {
	var rc dsn.Recipient
	switch {
	case f.Err != nil:
		rc = dsn.RecipientFromError(f.Recipient, f.Err)
	case f.Reply != nil:
		rc = dsn.Recipient{Address: f.Recipient, Status: f.Reply.Enhanced,
			DiagnosticCode: fmt.Sprintf("x-sluice; %d %s %s", f.Reply.Code, f.Reply.Enhanced, f.Reply.Text)}
	default:
		rc = dsn.Recipient{Address: f.Recipient, Status: "5.0.0"}
	}
	rc.Action = dsn.ActionFailed
	if f.Expired || rc.Status == "" || rc.Status[0] != '5' {
		// The last reply was temporary; the DSN reports a permanent
		// failure: delivery time expired (RFC 3463: 5.4.7).
		rc.Status = "5.4.7"
	}
	rc.LastAttempt = f.Time
	return rc
}

// bounce builds the DSN for failed recipients of m and submits it through
// the front door: a new message from the null sender to m's sender,
// source "dsn", run through on_mail, on_rcpt, on_message and on_route like
// any other (so it is signed, rewritten and routed by the same stages),
// with "received" (or "rejected"/"discarded") events of its own. It
// returns the DSN ready to write, nil when none is due.
//
// A stage that refuses the DSN permanently or discards it means no bounce
// (logged and recorded). A temporary failure (a stage error, a tempfail)
// must not lose the bounce: it is queued as built, routed by MX, and the
// failure is logged.
func (r *Relay) bounce(ctx context.Context, m *spool.Meta, data []byte, failed []queue.Failure) *Accepted {
	if m.Sender == "" || len(failed) == 0 {
		return nil
	}
	rep := dsn.Report{ReportingMTA: r.hostname, Sender: m.Sender, MessageID: m.ID, Arrival: m.Received, Header: data}
	for _, f := range failed {
		rep.Recipients = append(rep.Recipients, dsnRecipient(f))
	}
	out, err := dsn.Build(rep)
	if err != nil {
		r.log.Error("cannot build bounce; none sent", "bounce_of", m.ID, "err", err)
		return nil
	}
	conn := &pipeline.Conn{Source: pipeline.SourceDSN, ServerName: r.hostname,
		Identity: &pipeline.Identity{Name: "mailer-daemon", Tenant: m.Tenant, Method: "internal"}}
	s := r.NewSession(conn)
	s.bounce = true
	meta := map[string]string{"bounce_of": m.ID}
	t, err := s.Begin(ctx, "", nil, meta)
	if err != nil {
		return r.bounceFailed(ctx, conn, "", m, out, err)
	}
	defer t.Abort()
	if _, err := t.Rcpt(ctx, m.Sender); err != nil {
		return r.bounceFailed(ctx, conn, t.ID(), m, out, err)
	}
	msg, err := pipeline.ParseMessage(t.T, out)
	if err != nil {
		r.log.Error("cannot parse our own bounce; none sent", "bounce_of", m.ID, "err", err)
		return nil
	}
	acc, err := t.Prepare(ctx, msg, CommitOptions{})
	if err != nil {
		return r.bounceFailed(ctx, conn, t.ID(), m, out, err)
	}
	if acc.Meta == nil {
		r.log.Info("bounce discarded by the pipeline", "msgid", t.ID(), "bounce_of", m.ID, "sender", m.Sender)
	}
	return acc
}

// bounceFailed handles a DSN the pipeline refused: permanently, no bounce
// (the refusal is already recorded); temporarily, the DSN as built, by MX.
func (r *Relay) bounceFailed(ctx context.Context, conn *pipeline.Conn, id string, m *spool.Meta, out []byte, err error) *Accepted {
	if !pipeline.IsTemporary(err) {
		r.log.Info("bounce refused by the pipeline; none sent", "msgid", id, "bounce_of", m.ID, "sender", m.Sender, "err", err)
		return nil
	}
	r.log.Warn("the pipeline failed on a bounce; sending it as built, by MX", "msgid", id, "bounce_of", m.ID, "sender", m.Sender, "err", err)
	_, domain, serr := pipeline.SplitAddress(m.Sender)
	if serr != nil {
		r.log.Warn("sender address cannot receive a bounce", "bounce_of", m.ID, "sender", m.Sender)
		return nil
	}
	if id == "" {
		id = r.NewID()
	}
	route := pipeline.MX()
	bm := &spool.Meta{ID: id, Source: pipeline.SourceDSN, Sender: "", Tenant: m.Tenant, Identity: conn.Identity.Name,
		Received: r.now(), Size: len(out), Meta: map[string]string{"bounce_of": m.ID}}
	rc := &spool.Recipient{MsgID: id, Idx: 0, Address: m.Sender, Domain: domain, Route: route}
	ev := &pipeline.Event{Type: pipeline.EventReceived, MessageID: id, Recipient: m.Sender, Source: pipeline.SourceDSN,
		Tenant: m.Tenant, Queue: route.QueueName(domain), Metadata: bm.Meta, Size: len(out)}
	return &Accepted{Data: out, Meta: bm, Rcpts: []*spool.Recipient{rc}, Events: []*pipeline.Event{ev},
		Receipt: &Receipt{MessageID: id, Queued: 1}}
}
