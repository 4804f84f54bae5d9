package plugin

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the plugin stages' Prometheus metrics. Their only label
// besides hook and outcome is the stage name, so their cardinality is
// bounded by the configuration.
//
//	sluice_plugin_calls_total{stage,hook,outcome}    outcome: ok, error, timeout, unavailable
//	sluice_plugin_call_duration_seconds{stage,hook}  histogram, the whole call (slot wait included)
//	sluice_plugin_restarts_total{stage}              instance restarts
//	sluice_plugin_up{stage}                          running instances
//
// One Metrics serves every stage of a node; it is safe for concurrent use.
type Metrics struct {
	calls    *prometheus.CounterVec
	dur      *prometheus.HistogramVec
	restarts *prometheus.CounterVec
	up       *prometheus.GaugeVec
}

// NewMetrics creates the metrics and registers them with reg (nil: not
// registered, still counted). It fails when reg already has them.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_plugin_calls_total",
			Help: "Plugin hook calls by stage, hook and outcome (ok, error: the plugin returned an error or an invalid verdict, timeout: the call's deadline passed, unavailable: no instance running or it crashed).",
		}, []string{"stage", "hook", "outcome"}),
		dur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sluice_plugin_call_duration_seconds",
			Help:    "Duration of plugin hook calls, from the host's side (waiting for a max_in_flight slot included), in seconds.",
			Buckets: []float64{50e-6, 100e-6, 150e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 2.5, 5, 10},
		}, []string{"stage", "hook"}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_plugin_restarts_total",
			Help: "Plugin instance restarts after a crash, a failed health check or repeated call deadlines.",
		}, []string{"stage"}),
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sluice_plugin_up",
			Help: "Running plugin instances per stage (during a reload, those of the retiring pipeline are included until they stop).",
		}, []string{"stage"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.calls, m.dur, m.restarts, m.up} {
			if err := reg.Register(c); err != nil {
				return nil, errors.Join(errors.New("plugin metrics"), err)
			}
		}
	}
	return m, nil
}

// hookObs are one stage hook's metric children, resolved once.
type hookObs struct {
	dur   prometheus.Observer
	calls map[string]prometheus.Counter
}

// observers resolves the metric children of a stage's hooks.
func (m *Metrics) observers(stage string, hooks []string) map[string]*hookObs {
	out := make(map[string]*hookObs, len(hooks))
	for _, h := range hooks {
		o := &hookObs{dur: m.dur.WithLabelValues(stage, h), calls: map[string]prometheus.Counter{}}
		for _, oc := range []string{outcomeOK, outcomeError, outcomeTimeout, outcomeUnavailable} {
			o.calls[oc] = m.calls.WithLabelValues(stage, h, oc)
		}
		out[h] = o
	}
	return out
}
