package ratelimit

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-mta/sluice/internal/logx"
	"github.com/sluice-mta/sluice/pipeline"
)

// Metrics are the rate-limit counters of a node:
//
//	sluice_ratelimit_checks_total{stage, limit, store, result}  result: allowed, refused, error
//	sluice_ratelimit_store_errors_total{store}                  a store could not answer
//	sluice_ratelimit_lease_events_total{result}                 result: leased, lost (Redis leases)
//
// stage and limit come from the configuration (RateCheck.Stage and
// Limit), store is "memory" or "redis": every label is bounded.
type Metrics struct {
	checks *prometheus.CounterVec
	errs   *prometheus.CounterVec
	lease  *prometheus.CounterVec
}

// NewMetrics registers the counters on reg (nil: a private registry, for
// tools and tests that serve no metrics).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &Metrics{
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_ratelimit_checks_total",
			Help: "Rate-limit checks, by stage, limit, store and result (allowed, refused, error).",
		}, []string{"stage", "limit", "store", "result"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_ratelimit_store_errors_total",
			Help: "Rate-limit store calls that failed (Redis unreachable or timed out), by store.",
		}, []string{"store"}),
		lease: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_ratelimit_lease_events_total",
			Help: "Rate-limit events this node leased from Redis beyond what the checks needed (leased), and leased events that expired unspent (lost).",
		}, []string{"result"}),
	}
	for _, c := range []prometheus.Collector{m.checks, m.errs, m.lease} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// NewNode builds a node's stores: memory always, Redis on r when it is
// not nil, each counting into m and logging store errors to log at most
// once per 10 seconds (with the number held back).
func NewNode(r *pipeline.Redis, m *Metrics, log *slog.Logger) *pipeline.RateLimits {
	if log == nil {
		log = slog.Default()
	}
	rl := &pipeline.RateLimits{Memory: newCounted("memory", NewMemory(), m, log)}
	if r != nil {
		rs := NewRedis(r)
		rs.leasedEvents, rs.lostEvents = m.lease.WithLabelValues("leased"), m.lease.WithLabelValues("lost")
		rl.Redis = newCounted("redis", rs, m, log)
	}
	return rl
}

// counted wraps a store with the metrics and the error log.
type counted struct {
	name   string
	store  pipeline.RateStore
	m      *Metrics
	log    *slog.Logger
	sample *logx.Sampler
	errs   prometheus.Counter
	// counters caches each (stage, limit)'s three counters: a label
	// lookup per check would cost more than the memory check itself.
	counters sync.Map // labelKey → *[3]prometheus.Counter
}

type labelKey struct{ stage, limit string }

const (
	resAllowed = iota
	resRefused
	resError
)

func newCounted(name string, s pipeline.RateStore, m *Metrics, log *slog.Logger) *counted {
	return &counted{name: name, store: s, m: m, log: log, sample: logx.NewSampler(10 * time.Second),
		errs: m.errs.WithLabelValues(name)}
}

func (c *counted) counter(st, limit string) *[3]prometheus.Counter {
	k := labelKey{st, limit}
	if v, ok := c.counters.Load(k); ok {
		return v.(*[3]prometheus.Counter)
	}
	v := &[3]prometheus.Counter{
		c.m.checks.WithLabelValues(st, limit, c.name, "allowed"),
		c.m.checks.WithLabelValues(st, limit, c.name, "refused"),
		c.m.checks.WithLabelValues(st, limit, c.name, "error"),
	}
	got, _ := c.counters.LoadOrStore(k, v)
	return got.(*[3]prometheus.Counter)
}

func (c *counted) Check(ctx context.Context, checks []pipeline.RateCheck, out []pipeline.RateResult) error {
	err := c.store.Check(ctx, checks, out)
	if err != nil && errors.Is(ctx.Err(), context.Canceled) {
		// The caller went away (the client closed its connection): not
		// the store's failure, so neither counted nor logged as one.
		return err
	}
	if err != nil {
		c.errs.Inc()
		if ok, n := c.sample.Allow("store"); ok {
			c.log.Warn("rate-limit store failed; each stage applies its on_store_error rule",
				"store", c.name, "err", err, "similar_suppressed", n)
		}
		for i := range checks {
			c.counter(checks[i].Stage, checks[i].Limit)[resError].Inc()
		}
		return err
	}
	for i := range checks {
		r := resAllowed
		if !out[i].Allowed {
			r = resRefused
		}
		c.counter(checks[i].Stage, checks[i].Limit)[r].Inc()
	}
	return nil
}
