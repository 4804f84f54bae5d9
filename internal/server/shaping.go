package server

import (
	"context"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/queue"
	"github.com/sluice-mta/sluice/internal/shaping"
	"github.com/sluice-mta/sluice/pipeline"
)

// DialFrom makes dialer a queue.EgressDialer.
func (d dialer) DialFrom(ctx context.Context, r *pipeline.Route, domain string, eg delivery.Egress) (queue.Conn, error) {
	sess, err := d.d.DialFrom(ctx, r, domain, eg)
	if err != nil {
		return nil, err
	}
	return sess, nil
}

// newShaper builds the node's outbound shaping from sluice.shaping and
// sluice.egress; nil when neither is configured (one queue per recipient
// domain, as before). Its events go to the spool like every event.
func (s *Server) newShaper(cfg *config.Config) (*shaping.Shaper, error) {
	if cfg.Shaping == nil && cfg.Egress == nil {
		return nil, nil
	}
	o := shaping.Options{
		Resolver: s.res, Node: cfg.Node, Logger: s.log,
		Defaults: shaping.Params{
			ConnectionLimit:            intPtr(orInt(cfg.Delivery.MaxPerDestination, config.Defaults().Delivery.MaxPerDestination)),
			MaxDeliveriesPerConnection: intPtr(orInt(cfg.Delivery.MaxMessagesPerConn, config.Defaults().Delivery.MaxMessagesPerConn)),
		},
		Emit: func(ev *pipeline.Event) {
			b := s.sp.NewBatch()
			b.AddEvent(ev)
			if err := b.Commit(false); err != nil {
				s.log.Error("cannot record a shaping event", "type", ev.Type, "site", ev.Queue, "err", err)
			}
		},
	}
	if s.metrics != nil {
		o.Metrics = s.metrics
	}
	if cfg.Shaping != nil {
		o.Rules = cfg.Shaping.Rules
	}
	if eg := cfg.Egress; eg != nil {
		o.Sources, o.Pools, o.DefaultPool = eg.Sources, eg.Pools, eg.DefaultPool
		for i := range o.Sources {
			if o.Sources[i].HELO == "" {
				o.Sources[i].HELO = orString(cfg.Delivery.Hostname, cfg.Hostname)
			}
		}
	}
	return shaping.New(o)
}

func intPtr(n int) *int { return &n }

func orInt(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

func orString(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
