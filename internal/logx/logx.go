// Package logx holds what Sluice's packages share about logging: today a
// Sampler, which keeps a failure that repeats per message (a full disk, a
// broker down) from flooding the log with one line per message.
package logx

import (
	"sync"
	"time"
)

// Sampler lets one line per key through per interval and counts the lines
// it held back, so the next line that passes can say how many there were
// ("similar_suppressed"). Safe for concurrent use. The zero value is not
// usable; build it with NewSampler.
type Sampler struct {
	every time.Duration
	now   func() time.Time

	mu   sync.Mutex
	last map[string]time.Time
	drop map[string]int
}

// NewSampler returns a Sampler letting one line per key through every
// interval (at most 256 keys are remembered; past that the memory is
// cleared, so a flood of distinct keys costs at most one line each).
func NewSampler(every time.Duration) *Sampler {
	return &Sampler{every: every, now: time.Now, last: map[string]time.Time{}, drop: map[string]int{}}
}

// Allow reports whether a line with key may be logged now; when it may,
// suppressed is how many lines with that key were held back since the
// last one that passed.
func (s *Sampler) Allow(key string) (ok bool, suppressed int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if t, seen := s.last[key]; seen && now.Sub(t) < s.every {
		s.drop[key]++
		return false, 0
	}
	if len(s.last) > 256 {
		clear(s.last)
		clear(s.drop)
	}
	s.last[key] = now
	n := s.drop[key]
	delete(s.drop, key)
	return true, n
}
