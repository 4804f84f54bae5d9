package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Node holds the metrics of the message path that several packages
// (smtpsrc, relay, queue, the pipeline chain) count into. One Node per
// registry: NewNode registers it once (RegisterOnce), so a second call on
// the same registry returns collectors counting into the same series.
//
// Cost: the hot path (one accepted message, one delivered recipient, one
// stage call) uses children resolved once (per listener at session start,
// per stage and hook at chain compile), never WithLabelValues per
// message. Refusals and failures resolve their labels when they happen:
// they are not the throughput path.
//
// Every label value is bounded: listener names and stage names come from
// the configuration, phases and outcomes are fixed sets, status is "4xx"
// or "5xx", class is a bounce class of sluice.bounces. docs/metrics.md
// lists every metric.
type Node struct {
	// Connections is sluice_smtp_connections_total{listener}: SMTP
	// connections admitted (past the connection limits).
	Connections *prometheus.CounterVec
	// Sessions is sluice_smtp_sessions{listener}: SMTP connections open now.
	Sessions *prometheus.GaugeVec
	// Accepted is sluice_messages_accepted_total{source, listener}:
	// messages committed to the spool.
	Accepted *prometheus.CounterVec
	// Refused is sluice_refusals_total{source, listener, phase, stage,
	// status}: refusals answered to a client, once each (phase connect,
	// helo, auth, mail, rcpt, message; stage "" when no stage refused).
	Refused *prometheus.CounterVec
	// Recipients is sluice_delivery_recipients_total{outcome, class}:
	// recipient outcomes recorded by the queue (delivered, deferred,
	// bounced, expired; class "" for delivered).
	Recipients *prometheus.CounterVec
	// Attempts is sluice_delivery_attempts_total{result}: delivery
	// transactions to a next hop (ok, temporary, permanent) and connection
	// failures (connect).
	Attempts *prometheus.CounterVec
	// TLSAttempts is sluice_delivery_tls_total{policy, validated}:
	// delivery transactions by the TLS policy of their connection (none,
	// opportunistic, required, mta-sts) and whether its certificate was
	// verified ("true", "false").
	TLSAttempts *prometheus.CounterVec
	// AttemptSeconds is sluice_delivery_attempt_duration_seconds: one
	// delivery transaction on an open connection, MAIL to the end of data.
	AttemptSeconds prometheus.Histogram
	// SpoolCommitSeconds is sluice_spool_commit_duration_seconds: one
	// synced acceptance write (a group of messages).
	SpoolCommitSeconds prometheus.Histogram
	// StageSeconds is sluice_stage_duration_seconds{stage, hook}.
	StageSeconds *prometheus.HistogramVec
	// StageErrors is sluice_stage_errors_total{stage, hook}: stage calls
	// that failed (a Lua runtime error or timeout, a plugin error, a
	// panic) rather than answered.
	StageErrors *prometheus.CounterVec
}

// latencyBuckets suit calls from tens of microseconds to seconds.
var latencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// NewNode builds the message-path metrics and registers them with reg
// (nil: registers nothing, the collectors still count).
func NewNode(reg prometheus.Registerer) (*Node, error) {
	n := &Node{}
	var err error
	reg1 := func(c prometheus.Collector) prometheus.Collector {
		if err != nil {
			return c
		}
		var got prometheus.Collector
		got, err = RegisterOnce(reg, c)
		return got
	}
	n.Connections = reg1(prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sluice_smtp_connections_total",
		Help: "SMTP connections admitted, by listener."}, []string{"listener"})).(*prometheus.CounterVec)
	n.Sessions = reg1(prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sluice_smtp_sessions",
		Help: "SMTP connections open now, by listener."}, []string{"listener"})).(*prometheus.GaugeVec)
	n.Accepted = reg1(prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sluice_messages_accepted_total",
		Help: "Messages accepted (committed to the spool), by source and listener."}, []string{"source", "listener"})).(*prometheus.CounterVec)
	n.Refused = reg1(prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sluice_refusals_total",
		Help: "Refusals answered to clients, by source, listener, phase (connect, helo, auth, mail, rcpt, message), refusing stage and status (4xx, 5xx)."},
		[]string{"source", "listener", "phase", "stage", "status"})).(*prometheus.CounterVec)
	n.Recipients = reg1(prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sluice_delivery_recipients_total",
		Help: "Recipient delivery outcomes (delivered, deferred, bounced, expired), by bounce class."}, []string{"outcome", "class"})).(*prometheus.CounterVec)
	n.Attempts = reg1(prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sluice_delivery_attempts_total",
		Help: "Delivery transactions to next hops by result (ok, temporary, permanent), and connection failures (connect)."}, []string{"result"})).(*prometheus.CounterVec)
	n.TLSAttempts = reg1(prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sluice_delivery_tls_total",
		Help: "Delivery transactions by the TLS policy of their connection (none, opportunistic, required, mta-sts) and whether the certificate was verified."}, []string{"policy", "validated"})).(*prometheus.CounterVec)
	n.AttemptSeconds = reg1(prometheus.NewHistogram(prometheus.HistogramOpts{Name: "sluice_delivery_attempt_duration_seconds",
		Help: "Time of one delivery transaction on an open connection, MAIL FROM to the reply to the end of data.", Buckets: latencyBuckets})).(prometheus.Histogram)
	n.SpoolCommitSeconds = reg1(prometheus.NewHistogram(prometheus.HistogramOpts{Name: "sluice_spool_commit_duration_seconds",
		Help: "Time of one synced acceptance write to the spool (a group of messages).", Buckets: latencyBuckets})).(prometheus.Histogram)
	n.StageSeconds = reg1(prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "sluice_stage_duration_seconds",
		Help: "Time of one stage hook call, by stage name and hook.", Buckets: latencyBuckets}, []string{"stage", "hook"})).(*prometheus.HistogramVec)
	n.StageErrors = reg1(prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sluice_stage_errors_total",
		Help: "Stage hook calls that failed (Lua error or timeout, plugin error, panic) instead of answering, by stage and hook."}, []string{"stage", "hook"})).(*prometheus.CounterVec)
	if err != nil {
		return nil, err
	}
	return n, nil
}

// StageTimer resolves the children of one stage hook once; the returned
// function observes one call. It suits pipeline.ChainOptions.StageTimer.
// A nil Node returns nil.
func (n *Node) StageTimer(stage, hook string) func(d time.Duration, failed bool) {
	if n == nil {
		return nil
	}
	h := n.StageSeconds.WithLabelValues(stage, hook)
	e := n.StageErrors.WithLabelValues(stage, hook)
	return func(d time.Duration, failed bool) {
		h.Observe(d.Seconds())
		if failed {
			e.Inc()
		}
	}
}

// Status is the status label of an SMTP reply code: "4xx" or "5xx"
// ("other" for anything else).
func Status(code int) string {
	switch code / 100 {
	case 4:
		return "4xx"
	case 5:
		return "5xx"
	}
	return "other"
}
