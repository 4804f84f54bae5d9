package events

import (
	"context"
	"log/slog"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

// Lag returns how many outbox events the consumer name has not taken yet,
// and false when no consumer has that name. Safe for concurrent use.
func (e *Exporter) Lag(name string) (uint64, bool) {
	for _, c := range e.cons {
		if c.name == name {
			head, n := e.sp.OutboxHead(), c.next.Load()
			if head > n {
				return head - n, true
			}
			return 0, true
		}
	}
	return 0, false
}

// ErrBacklogFull refuses new mail while a sink's backlog is over its
// budget with on_backlog_full = "tempfail": 451 4.3.0 over SMTP, 503
// over HTTP.
var ErrBacklogFull = &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 3, 0},
	Message: "Event backlog full, try again later"}

// Backlog watches one sink's backlog (its lag in the outbox) against a
// budget. Check is what the relay consults at each commit; Watch logs,
// rate-limited, as the backlog grows. Safe for concurrent use.
type Backlog struct {
	// Max is the budget in events (0: no budget).
	Max uint64
	// Tempfail refuses new mail while the backlog is over Max; otherwise
	// mail is accepted and the outbox grows on (logged loudly).
	Tempfail bool
	// Lag returns the sink's current backlog in events.
	Lag    func() uint64
	Sink   string
	Logger *slog.Logger
}

// Check returns ErrBacklogFull while the backlog is over budget and
// Tempfail is set, nil otherwise. It costs a lock-protected read of the
// outbox head.
func (b *Backlog) Check() error {
	if b == nil || b.Max == 0 || !b.Tempfail {
		return nil
	}
	if b.Lag() > b.Max {
		return ErrBacklogFull
	}
	return nil
}

// Watch checks the backlog every interval until ctx ends: a warning when
// it passes half the budget and as it grows (at most once a minute), an
// error each minute while over budget, and one line when it is back under.
func (b *Backlog) Watch(ctx context.Context, interval time.Duration) {
	if b.Max == 0 {
		return
	}
	log := b.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "events", "consumer", b.Sink)
	t := time.NewTicker(interval)
	defer t.Stop()
	var lastWarn time.Time
	var lastLag uint64
	wasOver := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		lag := b.Lag()
		over := lag > b.Max
		action := "accepting mail on (on_backlog_full = \"accept\"); the outbox keeps growing"
		if b.Tempfail {
			action = "refusing new mail with 451 4.3.0 (on_backlog_full = \"tempfail\")"
		}
		switch {
		case over && (!wasOver || time.Since(lastWarn) >= time.Minute):
			log.Error("event backlog over budget: the sink is not keeping up (is Kafka down?); "+action,
				"backlog", lag, "max_backlog", b.Max)
			lastWarn = time.Now()
		case !over && wasOver:
			log.Info("event backlog back under budget", "backlog", lag, "max_backlog", b.Max)
		case !over && lag > b.Max/2 && lag > lastLag && time.Since(lastWarn) >= time.Minute:
			log.Warn("event backlog growing: over half its budget", "backlog", lag, "max_backlog", b.Max)
			lastWarn = time.Now()
		}
		wasOver, lastLag = over, lag
	}
}
