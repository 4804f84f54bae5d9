package queue

import (
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// attemptResult is the result label of one delivery transaction.
func attemptResult(err error) string {
	switch {
	case err == nil:
		return "ok"
	case pipeline.IsTemporary(err):
		return "temporary"
	}
	return "permanent"
}

// countAttempt counts one attempt in sluice_delivery_attempts_total and,
// for a transaction (d > 0), its duration.
func (q *Queue) countAttempt(result string, d time.Duration) {
	m := q.o.Metrics
	if m == nil {
		return
	}
	switch result {
	case "ok":
		q.attemptOK.Inc()
	default:
		m.Attempts.WithLabelValues(result).Inc()
	}
	if d > 0 {
		m.AttemptSeconds.Observe(d.Seconds())
	}
}

// countTLS counts one delivery transaction in sluice_delivery_tls_total
// by its connection's TLS policy.
func (q *Queue) countTLS(r *pipeline.Remote) {
	if m := q.o.Metrics; m != nil && m.TLSAttempts != nil && r.TLSPolicy != "" {
		m.TLSAttempts.WithLabelValues(r.TLSPolicy, strconv.FormatBool(r.TLSValidated)).Inc()
	}
}

// countOutcomes counts committed recipient outcomes in
// sluice_delivery_recipients_total: delivered through a child resolved
// once, failures (rarer) by their bounce class.
func (q *Queue) countOutcomes(evs []*pipeline.Event) {
	m := q.o.Metrics
	if m == nil {
		return
	}
	for _, ev := range evs {
		if ev.Type == pipeline.EventDelivered {
			q.delivered.Inc()
			continue
		}
		m.Recipients.WithLabelValues(ev.Type, ev.BounceClass).Inc()
	}
}

// resolveMetrics resolves the hot-path children (New).
func (q *Queue) resolveMetrics() {
	if m := q.o.Metrics; m != nil {
		q.attemptOK = m.Attempts.WithLabelValues("ok")
		q.delivered = m.Recipients.WithLabelValues(pipeline.EventDelivered, "")
	}
}

// Oldest returns the age of the oldest queued message by state: ready
// (due now, waiting for a worker) and waiting (deferred); 0 when none.
// It walks every queued item under the queue's lock: for a scrape every
// few seconds, not for a hot path.
func (q *Queue) Oldest(now time.Time) (ready, waiting time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	age := func(msg msgRef, cur time.Duration) time.Duration {
		if a := now.Sub(timeOf(q.received(msg))); a > cur {
			return a
		}
		return cur
	}
	for _, d := range q.dests {
		for _, it := range d.ready {
			ready = age(it.msg, ready)
		}
		for i := range d.back {
			ready = age(d.back[i].msg, ready)
		}
	}
	for i := range q.waiting {
		waiting = age(q.waiting[i].msg, waiting)
	}
	return ready, waiting
}

// logOutcome writes the one log line of a recipient's delivery outcome
// (delivered, deferred, bounced, expired): message id, queue, recipient
// domain (the full address only for failures and at debug level),
// result, attempt, time since acceptance, the next hop's reply and bounce
// class, and the error of a failure. All at info, so the log answers
// "what happened to message X" without the event stream; run at
// --log-level warn for fewer lines.
func (q *Queue) logOutcome(ev *pipeline.Event, r *spool.Recipient, delay time.Duration, err error) {
	if !q.log.Enabled(q.ctx, slog.LevelInfo) {
		return
	}
	attrs := make([]slog.Attr, 0, 10)
	attrs = append(attrs, slog.String("msgid", ev.MessageID), slog.String("queue", ev.Queue),
		slog.String("rcpt_domain", domainOf(r.Address)), slog.String("result", ev.Type),
		slog.Int("attempt", ev.Attempt), slog.Float64("delay_seconds", delay.Seconds()))
	if ev.Response != nil {
		attrs = append(attrs, slog.Int("code", ev.Response.Code), slog.String("enhanced", ev.Response.Enhanced))
	}
	if ev.BounceClass != "" {
		attrs = append(attrs, slog.String("class", ev.BounceClass))
	}
	if err != nil {
		attrs = append(attrs, slog.Any("err", err))
	}
	if err != nil || q.log.Enabled(q.ctx, slog.LevelDebug) {
		attrs = append(attrs, slog.String("rcpt", r.Address))
	}
	q.log.LogAttrs(q.ctx, slog.LevelInfo, "delivery outcome", attrs...)
}

// domainOf is the domain of an address (after the last @), lower-cased.
func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return strings.ToLower(addr[i+1:])
	}
	return ""
}
