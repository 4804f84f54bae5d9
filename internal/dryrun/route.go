package dryrun

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/relay"
	"github.com/sluice-mta/sluice/pipeline"
)

// Route answers "where would mail to addr go?": it runs only on_route
// for addr (with o's client and sender, a message of o.Data or a small
// generated one) and, for an MX route, looks up the domain's MX hosts
// with the configured resolver. The trace has one recipient; its Reply
// is set when on_route refuses it, and Reply is the client's answer had
// this been the only recipient.
func (r *Runner) Route(ctx context.Context, addr string, o Options) (*Trace, error) {
	o.To = []string{addr}
	if err := o.fill(); err != nil {
		return nil, err
	}
	rc, err := pipeline.NewRecipient(addr)
	if err != nil {
		return nil, fmt.Errorf("--route %q: %w", addr, err)
	}
	conn, err := r.conn(o)
	if err != nil {
		return nil, err
	}
	if o.Auth != "" {
		conn.Identity = &pipeline.Identity{Name: o.Auth}
	}
	txn := &pipeline.Txn{Conn: conn, ID: "DRYRUN-ROUTE", Sender: o.From, Received: o.Now(), Recipients: []*pipeline.Recipient{rc}}
	msg, err := pipeline.ParseMessage(txn, o.Data)
	if err != nil {
		return nil, fmt.Errorf("message: %w", err)
	}
	tr := &Trace{Config: r.cfg.File, Source: o.Source, Client: Client{IP: conn.RemoteIP.String(), Identity: o.Auth, RelayNetwork: conn.RelayNetwork}}
	r.rec.take()
	route, drop, err := r.pipe.Chain.Route(ctx, msg, rc)
	tr.Calls = r.rec.take()
	tr.Events = []Event{}
	http := o.Source == pipeline.SourceHTTP
	out := Recipient{Address: rc.Address}
	switch {
	case err != nil:
		rp := reply("data", err, "", http, false)
		out.Status, out.Reply, tr.Reply = relay.StatusRejected, &rp, &rp
	case drop:
		out.Status = relay.StatusDiscarded
	default:
		out.Status, out.Route, out.Queue = relay.StatusQueued, redact(route), route.QueueName(rc.Domain)
		if route.Kind == pipeline.RouteMX {
			if res, err := r.res.LookupMX(ctx, strings.TrimSuffix(rc.Domain, ".")); err != nil {
				out.MXErr = err.Error()
			} else if dnsx.IsNullMX(res.Records) {
				// As the delivery dialer decides it (internal/delivery).
				out.MXErr = "null MX (RFC 7505): the domain accepts no mail; delivery bounces at once with 556 5.1.10"
			} else {
				for _, m := range res.Records {
					out.MX = append(out.MX, MXHost{Host: m.Host, Pref: m.Pref})
				}
				sort.SliceStable(out.MX, func(i, j int) bool { return out.MX[i].Pref < out.MX[j].Pref })
			}
		}
		if route.Kind == pipeline.RouteMX || route.Kind == pipeline.RouteRelay {
			out.TLS = r.dial.TLSPlan(ctx, route, strings.TrimSuffix(rc.Domain, "."))
		}
	}
	tr.Recipients = []Recipient{out}
	return tr, nil
}
