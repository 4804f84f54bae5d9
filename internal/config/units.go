package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// ParseDuration parses a Go duration ("300ms", "1m30s", "5m", "120h") and
// also accepts a leading number of days: "5d", "1d12h", "0.5d".
// Negative durations are errors.
func ParseDuration(s string) (time.Duration, error) {
	in := s
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("empty duration")
	}
	if strings.HasPrefix(s, "-") {
		return 0, fmt.Errorf("duration %q is negative", in)
	}
	var total time.Duration
	if i := strings.IndexByte(s, 'd'); i >= 0 {
		days, err := strconv.ParseFloat(s[:i], 64)
		if err != nil || days < 0 || math.IsInf(days, 0) || math.IsNaN(days) || strings.ContainsAny(s[:i], "eExXpP+_") {
			return 0, fmt.Errorf("invalid duration %q: want e.g. \"30s\", \"5m\", \"2h\" or \"5d\"", in)
		}
		if days > float64(math.MaxInt64)/float64(24*time.Hour) {
			return 0, fmt.Errorf("duration %q is too long", in)
		}
		total = time.Duration(days * float64(24*time.Hour))
		s = s[i+1:]
		if s == "" {
			return total, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("invalid duration %q: want e.g. \"30s\", \"5m\", \"2h\" or \"5d\"", in)
	}
	if total > math.MaxInt64-d {
		return 0, fmt.Errorf("duration %q is too long", in)
	}
	return total + d, nil
}

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	// Longest suffixes first so "KiB" is not read as "B".
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
	{"kb", 1000}, {"mb", 1000 * 1000}, {"gb", 1000 * 1000 * 1000}, {"tb", 1000 * 1000 * 1000 * 1000},
	{"b", 1},
}

// ParseSize parses a byte size: a plain number of bytes ("1048576") or a
// number with a unit, case-insensitive, optional space: B, KB, MB, GB, TB
// (powers of 1000) and KiB, MiB, GiB, TiB (powers of 1024). "25MB" is
// 25,000,000 bytes; "25MiB" is 26,214,400. Fractions are allowed
// ("1.5MiB") and rounded down to whole bytes. Negative sizes are errors.
func ParseSize(s string) (int64, error) {
	in := s
	s = strings.ToLower(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(s, u.suffix) {
			mult = u.mult
			s = strings.TrimSpace(strings.TrimSuffix(s, u.suffix))
			break
		}
	}
	if s == "" || strings.ContainsAny(s, "eExXpP+_") {
		return 0, fmt.Errorf("invalid size %q: want bytes or e.g. \"50KiB\", \"25MB\", \"1GiB\"", in)
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("invalid size %q: want bytes or e.g. \"50KiB\", \"25MB\", \"1GiB\"", in)
	}
	if f < 0 {
		return 0, fmt.Errorf("size %q is negative", in)
	}
	v := f * float64(mult)
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("size %q is too large", in)
	}
	return int64(v), nil
}

// ParseRate parses a rate "N/unit": unit is "second", "minute", "hour"
// (or "s", "m", "h") or a duration ("30/10s"). N and the window must be
// larger than zero.
func ParseRate(s string) (int, time.Duration, error) {
	num, unit, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return 0, 0, fmt.Errorf("%q: want a rate like \"60/minute\"", s)
	}
	n, err := strconv.Atoi(strings.TrimSpace(num))
	if err != nil || n <= 0 {
		return 0, 0, fmt.Errorf("%q: the count must be a whole number larger than zero", s)
	}
	var w time.Duration
	switch u := strings.ToLower(strings.TrimSpace(unit)); u {
	case "second", "s":
		w = time.Second
	case "minute", "m", "min":
		w = time.Minute
	case "hour", "h":
		w = time.Hour
	default:
		w, err = ParseDuration(u)
		if err != nil {
			return 0, 0, fmt.Errorf("%q: want a rate like \"60/minute\": %v", s, err)
		}
		if w <= 0 {
			return 0, 0, fmt.Errorf("%q: the window must be longer than zero", s)
		}
	}
	return n, w, nil
}
