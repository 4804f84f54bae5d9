package capture

import (
	"context"
	"errors"
	"time"

	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/queue"
	"github.com/sluice-mta/sluice/pipeline"
)

// Dialer is the queue's dialer with capture routes: a capture route gets
// a Conn into the sandbox store, any other goes to Next. With a nil
// Store, capture routes defer with 451 4.3.0 (sluice.sandbox is not
// configured).
type Dialer struct {
	Next  queue.Dialer
	Store *Store
}

var (
	_ queue.Dialer       = Dialer{}
	_ queue.EgressDialer = Dialer{}
	_ queue.Conn         = (*Conn)(nil)
)

// errNoSandbox defers capture routes on a node without sluice.sandbox.
var errNoSandbox = &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 3, 0},
	Message: "capture route: sluice.sandbox is not configured on this node"}

// Dial opens a Conn for route.
func (d Dialer) Dial(ctx context.Context, route *pipeline.Route, domain string) (queue.Conn, error) {
	if route.Kind == pipeline.RouteCapture {
		return d.capture(route)
	}
	return d.Next.Dial(ctx, route, domain)
}

// DialFrom is Dial from an egress source (shaping on); capture routes
// ignore the source.
func (d Dialer) DialFrom(ctx context.Context, route *pipeline.Route, domain string, eg delivery.Egress) (queue.Conn, error) {
	if route.Kind == pipeline.RouteCapture {
		return d.capture(route)
	}
	if ed, ok := d.Next.(queue.EgressDialer); ok {
		return ed.DialFrom(ctx, route, domain, eg)
	}
	return d.Next.Dial(ctx, route, domain)
}

func (d Dialer) capture(route *pipeline.Route) (queue.Conn, error) {
	if d.Store == nil {
		return nil, errNoSandbox
	}
	return &Conn{s: d.Store, tenant: route.Tenant}, nil
}

// Conn is a capture "session" into one tenant's inbox. It is used by one
// queue worker at a time.
type Conn struct {
	s      *Store
	tenant string
	broken bool
}

// Deliver answers each recipient as its simulated rule says (accept by
// default), waiting for the longest simulated delay, then captures the
// message once for the recipients it accepted. A store that cannot write
// defers every recipient (451 4.3.0), as a next hop with a full disk
// would.
func (c *Conn) Deliver(ctx context.Context, env *delivery.Envelope, data []byte) ([]delivery.Result, error) {
	res := make([]delivery.Result, len(env.Rcpts))
	var (
		accepted []string
		after    []*simRule // the accepted recipients' rules (nil: none)
		wait     time.Duration
	)
	for i, r := range env.Rcpts {
		rule := c.s.sim.match(c.tenant, r.Addr)
		err, delay := rule.outcome(r.Attempt)
		wait = max(wait, delay)
		if err != nil {
			res[i] = delivery.Result{Err: err, Reply: pipeline.ResponseOf(err)}
			continue
		}
		accepted = append(accepted, r.Addr)
		after = append(after, rule)
	}
	if wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			c.broken = true
			return nil, &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 4, 2}, Message: "simulated slow server: delivery stopped", Cause: errors.Join(delivery.ErrConnection, ctx.Err())}
		}
	}
	if len(accepted) == 0 {
		return res, nil
	}
	sm, err := c.s.PutInfo(c.tenant, env.MsgID, env.From, accepted, data, env.Tags, env.Source)
	if err != nil {
		c.s.log.Error("cannot capture a message; its recipients are deferred", "msgid", env.MsgID, "tenant", c.tenant, "err", err)
		c.broken = true
		return nil, &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 3, 0}, Message: "sandbox store write failed", Cause: err}
	}
	for i, rule := range after {
		if rule != nil {
			c.s.afterAccept(rule, c.tenant, env, accepted[i], sm)
		}
	}
	ok := &pipeline.Response{Code: 250, Enhanced: "2.0.0", Text: "captured as " + sm.ID}
	for i := range res {
		if res[i].Err == nil {
			res[i].Reply = ok
		}
	}
	return res, nil
}

// Remote names the sandbox in events.
func (c *Conn) Remote() pipeline.Remote { return simRemote }

// Usable is false after a failed Deliver.
func (c *Conn) Usable() bool { return !c.broken }

// Close does nothing.
func (c *Conn) Close() error { return nil }
