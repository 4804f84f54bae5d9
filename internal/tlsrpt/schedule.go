package tlsrpt

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/sluice-mta/sluice/internal/dnsx"
)

// Reporter sends each UTC day's reports once a day, at SendAt past
// midnight UTC, for the day before.
type Reporter struct {
	Recorder *Recorder
	Sender   *Sender
	Meta     Meta
	// SendAt is the time of day (UTC) reports for the previous day go
	// out; default 1 hour (01:00). RFC 8460 section 4.1 asks for daily
	// reports; a delay after midnight lets late sessions of the day end.
	SendAt time.Duration
	Logger *slog.Logger
	Now    func() time.Time // default time.Now
}

func (p *Reporter) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

// SendDay sends day's report to every domain with counts that has not
// had it yet, and returns how many were delivered. A domain without a
// TLSRPT record is marked sent (nothing to do); one whose rua all failed
// is left for the next run.
func (p *Reporter) SendDay(ctx context.Context, day string) (int, error) {
	if _, err := Day(day); err != nil {
		return 0, err
	}
	log := p.Logger
	if log == nil {
		log = slog.Default()
	}
	n := 0
	for _, d := range p.Recorder.Domains(day) {
		if ctx.Err() != nil {
			return n, ctx.Err()
		}
		if p.Recorder.Sent(day, d) {
			continue
		}
		rep, err := p.Recorder.Report(day, d, p.Meta)
		if err != nil || rep == nil {
			continue
		}
		ruas, err := LookupRUA(ctx, p.Sender.Resolver, d)
		if err != nil {
			log.Debug("no tls report sent", "domain", d, "day", day, "reason", err)
			if !isTemporary(err) {
				p.Recorder.MarkSent(day, d)
			}
			continue
		}
		if err := p.Sender.SendTo(ctx, d, rep, ruas); err != nil {
			log.Warn("tls report not delivered; retried at the next run", "domain", d, "day", day, "err", err)
			continue
		}
		p.Recorder.MarkSent(day, d)
		n++
	}
	if err := p.Recorder.Flush(); err != nil {
		return n, err
	}
	return n, nil
}

// Run sends the previous day's reports at SendAt each day (and at start,
// when SendAt has passed and they are not sent yet; reports that failed
// are tried again every hour until the day is over) until ctx ends.
func (p *Reporter) Run(ctx context.Context) {
	at := cmp.Or(p.SendAt, time.Hour)
	for {
		now := p.now().UTC()
		today := now.Truncate(24 * time.Hour)
		yesterday := today.AddDate(0, 0, -1).Format(time.DateOnly)
		var wait time.Duration
		if now.Sub(today) >= at {
			if _, err := p.SendDay(ctx, yesterday); err != nil && ctx.Err() == nil {
				slogOr(p.Logger).Warn("tls reports", "day", yesterday, "err", err)
			}
			wait = min(time.Hour, today.Add(24*time.Hour+at).Sub(now))
		} else {
			wait = today.Add(at).Sub(now)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func slogOr(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.Default()
	}
	return l
}

// isTemporary: a DNS failure that may clear (not "no record").
func isTemporary(err error) bool {
	var te *dnsx.TemporaryError
	return errors.As(err, &te)
}
