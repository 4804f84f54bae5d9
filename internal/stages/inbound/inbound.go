// Package inbound holds what the inbound authentication stages (spf,
// dkim_verify, dmarc) share: the check_submissions option, which mail
// they skip, and the sluice_auth_results_total counter.
package inbound

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-mta/sluice/internal/metrics"
	"github.com/sluice-mta/sluice/internal/stages/opts"
	"github.com/sluice-mta/sluice/pipeline"
)

// Base is embedded by the inbound stages. It gives them Name and the
// metrics part of Provision. Safe for concurrent use once provisioned.
type Base struct {
	name     string
	checkAll bool                   // check_submissions
	results  *prometheus.CounterVec // sluice_auth_results_total
}

// NewBase reads the shared options (check_submissions) from o.
func NewBase(name string, o *opts.Opts) Base {
	b := Base{name: name}
	o.Bool("check_submissions", &b.checkAll)
	return b
}

// Name implements pipeline.Stage.
func (b *Base) Name() string { return b.name }

// ProvisionMetrics takes the node's registry (nil: counts nowhere).
func (b *Base) ProvisionMetrics(env *pipeline.Env) error {
	var err error
	b.results, err = metrics.AuthResults(env.Metrics)
	return err
}

// Skip reports whether mail on c is not checked: a submission
// (pipeline.Conn.Submission) without check_submissions.
func (b *Base) Skip(c *pipeline.Conn) bool { return c.Submission() && !b.checkAll }

// Count adds results to sluice_auth_results_total.
func (b *Base) Count(results []pipeline.AuthResult) {
	if b.results == nil {
		return
	}
	for _, a := range results {
		b.results.WithLabelValues(a.Method, a.Result).Inc()
	}
}
