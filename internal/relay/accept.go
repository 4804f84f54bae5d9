package relay

import (
	"context"

	"github.com/sluice-mta/sluice/internal/dsn"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

func (r *Relay) event(typ string, msg *pipeline.Message, rcpt string, size int) *pipeline.Event {
	return &pipeline.Event{
		Type: typ, MessageID: msg.ID, Recipient: rcpt, Sender: msg.Sender, Source: msg.Conn.Source,
		Tenant: msg.Conn.Tenant(), Tags: msg.Tags, Metadata: msg.Meta, Size: size,
		RequireTLS: msg.Params.RequireTLS,
	}
}

// prepare runs on_message and on_route and builds what to write. On
// success evs are also in acc.Events. On error nothing is to be written
// but evs (the events of recipients refused or dropped at on_route), and
// acc, when not nil, carries only the Receipt (per-recipient results).
func (r *Relay) prepare(ctx context.Context, chain *pipeline.Chain, msg *pipeline.Message, o CommitOptions) (acc *Accepted, evs []*pipeline.Event, err error) {
	discard, reason, err := chain.Message(ctx, msg)
	if err != nil {
		return nil, nil, err
	}
	// RFC 8689 section 5: "TLS-Required: No" relaxes the recipient's
	// TLS policy, unless the message also has REQUIRETLS (which wins).
	msg.Params.TLSOptional = !msg.Params.RequireTLS && tlsRequiredNo(msg)
	head, err := msg.HeaderBytes()
	if err != nil {
		return nil, nil, &pipeline.Error{Code: 554, Enhanced: pipeline.EnhancedCode{5, 6, 0}, Message: "Message cannot be serialised", Cause: err}
	}
	acc = &Accepted{Msg: msg, Head: head, Body: msg.Body, Receipt: &Receipt{MessageID: msg.ID}}
	size := acc.Size()
	rc := acc.Receipt
	if discard {
		rc.Discarded = true
		for _, rcpt := range msg.Recipients {
			ev := r.event(pipeline.EventDiscarded, msg, rcpt.Address, size)
			ev.Response = &pipeline.Response{Code: 250, Enhanced: "2.0.0", Text: reason}
			acc.Events = append(acc.Events, ev)
			rc.Recipients = append(rc.Recipients, RcptResult{Address: rcpt.Address, Status: StatusDiscarded})
		}
		return acc, acc.Events, nil
	}

	var (
		firstErr *pipeline.Error
		tempErr  error // first temporary route failure
		refused  []dsn.Notice
	)
	for i, rcpt := range msg.Recipients {
		route, drop, err := chain.Route(ctx, msg, rcpt)
		switch {
		case err != nil:
			rep := pipeline.Reply(err)
			if firstErr == nil {
				firstErr = &rep
			}
			ev := r.event(pipeline.EventRejected, msg, rcpt.Address, size)
			ev.Response = pipeline.ResponseOf(err)
			evs = append(evs, ev)
			rc.Recipients = append(rc.Recipients, RcptResult{Address: rcpt.Address, Status: StatusRejected, Err: &rep})
			if !rep.Temporary() {
				refused = append(refused, dsn.Notice{Outcome: dsn.Failed, Rcpt: &spool.Recipient{Address: rcpt.Address, Params: rcpt.Params},
					Reply: ev.Response, Err: err, Time: r.now()})
			} else if tempErr == nil {
				tempErr = err
			}
		case drop:
			evs = append(evs, r.event(pipeline.EventDiscarded, msg, rcpt.Address, size))
			rc.Recipients = append(rc.Recipients, RcptResult{Address: rcpt.Address, Status: StatusDiscarded})
		default:
			route = r.captureRoute(msg.Conn, route)
			rcpt.Route = route
			acc.Rcpts = append(acc.Rcpts, &spool.Recipient{MsgID: msg.ID, Idx: i, Address: rcpt.Address, Domain: rcpt.Domain, Route: route, Params: rcpt.Params})
			ev := r.event(pipeline.EventReceived, msg, rcpt.Address, size)
			ev.Queue = route.QueueName(rcpt.Domain)
			evs = append(evs, ev)
			rc.Recipients = append(rc.Recipients, RcptResult{Address: rcpt.Address, Status: StatusQueued})
		}
	}
	if o.OneReply && tempErr != nil {
		// One reply for all recipients: a recipient that can neither be
		// queued nor bounced makes the whole message a 4xx, so the client
		// retries it; nothing is written but the refusals, each with its
		// own reply (the other recipients are refused with this 4xx).
		var refusals []*pipeline.Event
		for _, ev := range evs {
			if ev.Type == pipeline.EventRejected {
				refusals = append(refusals, ev)
			}
		}
		return nil, refusals, tempErr
	}
	rc.Queued = len(acc.Rcpts)
	if len(acc.Rcpts) == 0 && firstErr != nil {
		// Nothing to queue: the message is refused with the first
		// recipient's reply.
		return acc, evs, firstErr
	}
	identity := ""
	if msg.Conn.Identity != nil {
		identity = msg.Conn.Identity.Name
	}
	if len(acc.Rcpts) > 0 {
		acc.Meta = &spool.Meta{
			ID: msg.ID, Source: msg.Conn.Source, Sender: msg.Sender, Tenant: msg.Conn.Tenant(), Identity: identity,
			Tags: msg.Tags, Meta: msg.Meta, Received: msg.Received, Size: size, Params: msg.Params,
		}
	}
	if r.inspect != nil {
		if ev := r.inspect(msg); ev != nil {
			ev.Size = size
			evs = append(evs, ev)
		}
	}
	acc.Events = evs
	if o.OneReply && len(refused) > 0 && msg.Sender != "" {
		// The DSN for recipients refused at on_route enters through the
		// front door and commits with the message.
		m := acc.Meta
		if m == nil {
			m = &spool.Meta{ID: msg.ID, Source: msg.Conn.Source, Sender: msg.Sender, Tenant: msg.Conn.Tenant(), Received: msg.Received, Size: size, Params: msg.Params}
		}
		if b := r.notify(ctx, nil, m, func() ([]byte, error) { return acc.Bytes(), nil }, refused); b != nil {
			acc.Bounce = b
		}
	}
	return acc, evs, nil
}

// captureRoute is route with the sandbox applied: a connection whose mail
// is captured (Options.Sandbox) goes to its inbox, and a capture route
// without a tenant gets the message's.
func (r *Relay) captureRoute(c *pipeline.Conn, route *pipeline.Route) *pipeline.Route {
	if r.sandbox != nil {
		if t, ok := r.sandbox(c); ok {
			return pipeline.Capture(t)
		}
	}
	if route.Kind == pipeline.RouteCapture && route.Tenant == "" {
		nr := *route
		nr.Tenant = c.Tenant()
		return &nr
	}
	return route
}
