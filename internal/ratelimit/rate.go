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

// maxPeriod bounds the period of a rate: 366 days.
const maxPeriod = 366 * 24 * time.Hour

// maxTolerance caps a limit's tolerance (burst × period / N), about 73
// years: larger bursts behave as this one, and every sum of times the
// stores make (a TAT at most now + 2 × tolerance) stays within int64
// nanoseconds, and within the 2^53 that Redis's Lua numbers hold exactly
// in microseconds.
const maxTolerance = int64(1) << 61

// ParseRate parses "N/unit" or "N/duration": "100/minute", "20/second",
// "1000/hour", "5000/day" (also "s", "sec", "m", "min", "h", "d"), or a Go
// duration after the slash ("10/30s", "300/5m"). N is 1 to MaxLimit; the
// period is from 1 ms to 366 days. Burst is left 0 (= N).
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
	if d > maxPeriod {
		return pipeline.Rate{}, fmt.Errorf("rate %q: the period must be at most 366 days (8784h)", s)
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
// least one unit; the tolerance is at most maxTolerance (a burst × period
// that would overflow int64 saturates instead of wrapping around).
func gcra(r pipeline.Rate, unit int64) (emission, tolerance int64) {
	emission = int64(r.Period) / unit / int64(r.Limit)
	if emission < 1 {
		emission = 1
	}
	limit := maxTolerance / unit
	if b := int64(r.EffectiveBurst()); b > 0 && emission <= limit/b {
		return emission, emission * b
	}
	return emission, limit
}

// over reports whether a cost of n events never fits the tolerance
// (computed without multiplying, which could overflow).
func over(n, emission, tolerance int64) bool { return n > tolerance/emission }
