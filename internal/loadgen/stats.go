// Package loadgen is the measuring instrument behind cmd/sluice-bench: an SMTP
// and HTTP load generator plus a counting SMTP sink. It works against any SMTP
// relay; nothing in it depends on Sluice itself.
package loadgen

import (
	"math"
	"slices"
	"time"
)

// Percentile returns the p-th percentile (0 < p <= 100) of an ascending
// sorted slice, by the nearest-rank method: the smallest value such that at
// least p percent of the values are <= it. It returns 0 for an empty slice;
// p <= 0 gives the minimum and p >= 100 the maximum.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	if p <= 0 {
		return sorted[0]
	}
	if p >= 100 {
		return sorted[n-1]
	}
	rank := int(math.Ceil(p / 100 * float64(n))) // 1-based
	if rank < 1 {
		rank = 1
	}
	if rank > n {
		rank = n
	}
	return sorted[rank-1]
}

// LatencySummary holds acceptance-latency statistics, in milliseconds.
type LatencySummary struct {
	Count int     `json:"count"`
	Mean  float64 `json:"mean_ms"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p999_ms"`
	Max   float64 `json:"max_ms"`
}

// Summarize sorts d in place and computes its summary.
func Summarize(d []time.Duration) LatencySummary {
	if len(d) == 0 {
		return LatencySummary{}
	}
	slices.Sort(d)
	var sum time.Duration
	for _, v := range d {
		sum += v
	}
	return LatencySummary{
		Count: len(d),
		Mean:  ms(sum / time.Duration(len(d))),
		P50:   ms(Percentile(d, 50)),
		P90:   ms(Percentile(d, 90)),
		P99:   ms(Percentile(d, 99)),
		P999:  ms(Percentile(d, 99.9)),
		Max:   ms(d[len(d)-1]),
	}
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }
