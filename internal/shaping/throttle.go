package shaping

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"golang.org/x/time/rate"
)

// Throttle is a rate: at most Quantity events per Period, spaced evenly
// unless Burst allows more at once. It is KumoMTA's throttle spec,
// "[local:]QUANTITY/[N]PERIOD[,max_burst=B]", e.g. "10/s", "500/hr",
// "1,000/day", "6/m,max_burst=1". The "local:" prefix is accepted and
// ignored: Sluice's throttles are always per node.
//
// Burst defaults to 1 (sends spaced Period/Quantity apart), which is
// stricter than KumoMTA's default (Burst = Quantity): a Sluice throttle
// never lets more than Quantity+Burst-1 messages through in any window of
// one Period.
type Throttle struct {
	Quantity int
	Period   time.Duration
	Burst    int
	spec     string
}

// String returns the spec as written.
func (t Throttle) String() string { return t.spec }

// limiter returns a token bucket enforcing t.
func (t Throttle) limiter() *rate.Limiter {
	return rate.NewLimiter(rate.Limit(float64(t.Quantity)/t.Period.Seconds()), t.Burst)
}

var periods = map[string]time.Duration{
	"d": 24 * time.Hour, "day": 24 * time.Hour, "days": 24 * time.Hour,
	"h": time.Hour, "hr": time.Hour, "hour": time.Hour, "hours": time.Hour,
	"m": time.Minute, "min": time.Minute, "minute": time.Minute, "minutes": time.Minute,
	"s": time.Second, "sec": time.Second, "second": time.Second, "seconds": time.Second,
}

// ParseThrottle parses a throttle spec (see Throttle). Errors say what is
// wrong: "want QUANTITY/PERIOD", an unknown period, a quantity below 1.
func ParseThrottle(spec string) (Throttle, error) {
	s := strings.TrimSpace(spec)
	s = strings.TrimPrefix(s, "local:")
	t := Throttle{Burst: 1, spec: spec}
	if i := strings.Index(s, ",max_burst="); i >= 0 {
		b, err := strconv.Atoi(strings.TrimSpace(s[i+len(",max_burst="):]))
		if err != nil || b < 1 {
			return t, fmt.Errorf("throttle %q: max_burst must be a whole number of at least 1", spec)
		}
		t.Burst = b
		s = s[:i]
	}
	q, p, ok := strings.Cut(s, "/")
	if !ok {
		return t, fmt.Errorf("throttle %q: want QUANTITY/PERIOD, e.g. \"10/s\" or \"500/hour\"", spec)
	}
	n, err := strconv.Atoi(strings.NewReplacer(",", "", "_", "").Replace(strings.TrimSpace(q)))
	if err != nil || n < 1 {
		return t, fmt.Errorf("throttle %q: the quantity must be a whole number of at least 1", spec)
	}
	p = strings.TrimSpace(p)
	j := 0
	for j < len(p) && p[j] >= '0' && p[j] <= '9' {
		j++
	}
	mult := 1
	if j > 0 {
		if mult, err = strconv.Atoi(p[:j]); err != nil || mult < 1 {
			return t, fmt.Errorf("throttle %q: bad period multiplier", spec)
		}
	}
	unit, ok := periods[strings.ToLower(strings.TrimSpace(p[j:]))]
	if !ok {
		return t, fmt.Errorf("throttle %q: unknown period %q (want s, m, h or d)", spec, p[j:])
	}
	if mult > math.MaxInt32 {
		return t, fmt.Errorf("throttle %q: period too long", spec)
	}
	t.Quantity, t.Period = n, time.Duration(mult)*unit
	return t, nil
}
