package ratelimit

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

// MaxLimit bounds the number of events of a rate ("N/period").
const MaxLimit = 1_000_000_000

// ParseRate parses "N/unit" or "N/duration": "100/minute", "20/second",
// "1000/hour", "5000/day" (also "s", "sec", "m", "min", "h", "d"), or a Go
// duration after the slash ("10/30s", "300/5m"). N is 1 to MaxLimit; the
// period is at least 1 ms. Burst is left 0 (= N).
func ParseRate(s string) (pipeline.Rate, error) {
	num, per, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return pipeline.Rate{}, fmt.Errorf("rate %q: want \"N/period\" like \"100/minute\" or \"10/30s\"", s)
	}
	n, err := strconv.Atoi(strings.TrimSpace(num))
	if err != nil || n < 1 || n > MaxLimit {
		return pipeline.Rate{}, fmt.Errorf("rate %q: %q is not a whole number from 1 to %d", s, num, MaxLimit)
	}
	per = strings.TrimSpace(per)
	var d time.Duration
	switch strings.ToLower(per) {
	case "s", "sec", "second":
		d = time.Second
	case "m", "min", "minute":
		d = time.Minute
	case "h", "hour":
		d = time.Hour
	case "d", "day":
		d = 24 * time.Hour
	default:
		d, err = time.ParseDuration(per)
		if err != nil {
			return pipeline.Rate{}, fmt.Errorf("rate %q: period %q is not second, minute, hour, day or a duration like 30s", s, per)
		}
	}
	if d < time.Millisecond {
		return pipeline.Rate{}, fmt.Errorf("rate %q: the period must be at least 1ms", s)
	}
	return pipeline.Rate{Limit: n, Period: d}, nil
}

// FormatRate writes r back as ParseRate reads it ("100/1m0s" style for
// periods that are not one unit).
func FormatRate(r pipeline.Rate) string {
	var per string
	switch r.Period {
	case time.Second:
		per = "second"
	case time.Minute:
		per = "minute"
	case time.Hour:
		per = "hour"
	case 24 * time.Hour:
		per = "day"
	default:
		per = r.Period.String()
	}
	return strconv.Itoa(r.Limit) + "/" + per
}

// gcra returns the emission interval and the tolerance of r in the unit
// given (1 for nanoseconds, 1000 for microseconds). The interval is at
// least one unit.
func gcra(r pipeline.Rate, unit int64) (emission, tolerance int64) {
	emission = int64(r.Period) / unit / int64(r.Limit)
	if emission < 1 {
		emission = 1
	}
	return emission, emission * int64(r.EffectiveBurst())
}
