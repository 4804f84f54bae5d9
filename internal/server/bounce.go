package server

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/sluice-mta/sluice/internal/dsn"
	"github.com/sluice-mta/sluice/internal/queue"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// bouncer builds RFC 3464 DSNs for the queue and routes them through the
// pipeline's on_route stages, so operators' routing (a smarthost, say)
// applies to bounces as to any other mail.
type bouncer struct {
	chain    *pipeline.Chain
	hostname string
	log      *slog.Logger
}

func (b *bouncer) Bounce(ctx context.Context, m *spool.Meta, data []byte, failed []queue.Failure) ([]byte, *pipeline.Route, error) {
	rep := dsn.Report{ReportingMTA: b.hostname, Sender: m.Sender, MessageID: m.ID, Arrival: m.Received, Header: data}
	for _, f := range failed {
		rc := dsn.Recipient{Address: f.Recipient, Action: dsn.ActionFailed, RemoteMTA: f.Remote, LastAttempt: f.Time}
		if f.Reply != nil {
			rc.Status = f.Reply.Enhanced
			rc.DiagnosticCode = fmt.Sprintf("smtp; %d %s %s", f.Reply.Code, f.Reply.Enhanced, f.Reply.Text)
		}
		if f.Expired && f.Reply != nil {
			// The last reply was temporary; the DSN reports a permanent
			// failure: delivery time expired (RFC 3463 4.4.7 -> 5.4.7).
			rc.Status = "5.4.7"
		}
		rep.Recipients = append(rep.Recipients, rc)
	}
	out, err := dsn.Build(rep)
	if err != nil {
		return nil, nil, err
	}
	// Route the DSN like any message: on_route sees source "dsn".
	txn := &pipeline.Txn{Conn: &pipeline.Conn{Source: pipeline.SourceDSN}, ID: m.ID, Sender: "", Received: m.Received}
	rcpt, err := pipeline.NewRecipient(m.Sender)
	if err != nil {
		return nil, nil, err
	}
	txn.Recipients = []*pipeline.Recipient{rcpt}
	msg, err := pipeline.ParseMessage(txn, out)
	if err != nil {
		return nil, nil, err
	}
	route, drop, err := b.chain.Route(ctx, msg, rcpt)
	switch {
	case drop:
		// The operator's routing discards bounces (say, to avoid
		// backscatter): send none.
		return nil, nil, queue.ErrNoBounce
	case err != nil:
		// A bounce must not be lost to a routing script's failure: fall
		// back to MX and say so.
		b.log.Warn("on_route failed for a bounce; using MX", "bounce_of", m.ID, "err", err)
		route = pipeline.MX()
	}
	return out, route, nil
}
