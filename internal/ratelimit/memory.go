package ratelimit

import (
	"context"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

const (
	shards = 64
	// minSweep is the smallest map size at which a shard looks for idle
	// keys; after a sweep the next one waits until the map doubles.
	minSweep = 256
	// DefaultMaxKeys bounds the keys a Memory store holds (about 120 bytes
	// each: 1,000,000 keys is about 120 MB).
	DefaultMaxKeys = 1_000_000
)

// Memory is a pipeline.RateStore in this process: 64 shards, each a
// mutex and a map from key to TAT (nanoseconds on a monotonic clock).
// A key whose TAT has passed is idle (the same as absent); a shard drops
// its idle keys when it has doubled in size since its last sweep, so
// memory follows the number of keys active within their period, at an
// amortised O(1) per new key and with no goroutine.
//
// Memory is bounded: past DefaultMaxKeys keys still within their period
// (many distinct forged sender domains at an MX, say), a shard forgets
// arbitrary keys down to 15/16 of its share, and those keys start afresh:
// the store fails open for them rather than grow without bound. Evicted
// counts them. Safe for concurrent use; the zero value is not usable
// (NewMemory).
type Memory struct {
	seed     maphash.Seed
	start    time.Time
	now      func() time.Duration // since start; tests move it
	shardCap int                  // keys per shard before eviction
	evicted  atomic.Uint64
	sh       [shards]shard
}

type shard struct {
	mu      sync.Mutex
	m       map[string]int64
	sweepAt int
	_       [40]byte // keep shards on separate cache lines
}

// NewMemory returns an empty store holding at most DefaultMaxKeys keys.
func NewMemory() *Memory { return NewMemoryMax(DefaultMaxKeys) }

// NewMemoryMax returns an empty store holding at most about maxKeys keys
// (rounded up to a multiple of 64).
func NewMemoryMax(maxKeys int) *Memory {
	m := &Memory{seed: maphash.MakeSeed(), start: time.Now(), shardCap: max((maxKeys+shards-1)/shards, 1)}
	m.now = func() time.Duration { return time.Since(m.start) }
	for i := range m.sh {
		m.sh[i].m = map[string]int64{}
		m.sh[i].sweepAt = minSweep
	}
	return m
}

// Len returns the number of keys held (idle ones not yet swept
// included).
func (m *Memory) Len() int {
	n := 0
	for i := range m.sh {
		s := &m.sh[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

// Evicted returns how many keys were forgotten because the store was
// full (their limits started afresh).
func (m *Memory) Evicted() uint64 { return m.evicted.Load() }

// Check implements pipeline.RateStore. It never fails. The checks are not
// one atomic step across shards: each is decided and charged under its
// shard's lock, and when one is refused those already charged are
// refunded, so two messages racing at a boundary may both be refused
// where one would have fitted; neither ever passes a limit.
func (m *Memory) Check(_ context.Context, checks []pipeline.RateCheck, out []pipeline.RateResult) error {
	now := int64(m.now())
	ok := true
	for i := range checks {
		out[i] = m.one(&checks[i], now)
		ok = ok && out[i].Allowed
	}
	if !ok {
		for i := range checks {
			if out[i].Allowed {
				m.refund(&checks[i])
			}
		}
	}
	return nil
}

func cost(c *pipeline.RateCheck) int64 {
	if c.N > 0 {
		return int64(c.N)
	}
	return 1
}

func (m *Memory) shard(key string) *shard {
	return &m.sh[maphash.String(m.seed, key)%shards]
}

func (m *Memory) one(c *pipeline.RateCheck, now int64) pipeline.RateResult {
	e, tol := gcra(c.Rate, 1)
	if over(cost(c), e, tol) {
		return pipeline.RateResult{RetryAfter: -1}
	}
	inc := e * cost(c)
	s := m.shard(c.Key)
	s.mu.Lock()
	tat, seen := s.m[c.Key]
	if tat < now {
		tat = now
	}
	next := tat + inc
	if late := next - now - tol; late > 0 {
		s.mu.Unlock()
		return pipeline.RateResult{RetryAfter: time.Duration(late)}
	}
	s.m[c.Key] = next
	if !seen && len(s.m) >= s.sweepAt {
		for k, t := range s.m {
			if t <= now {
				delete(s.m, k)
			}
		}
		s.sweepAt = max(2*len(s.m), minSweep)
	}
	if len(s.m) > m.shardCap {
		keep := max(m.shardCap*15/16, 1)
		var n uint64
		for k := range s.m { // map order: arbitrary keys go
			if len(s.m) <= keep {
				break
			}
			if k != c.Key {
				delete(s.m, k)
				n++
			}
		}
		m.evicted.Add(n)
	}
	s.mu.Unlock()
	return pipeline.RateResult{Allowed: true, Remaining: int((tol - (next - now)) / e)}
}

func (m *Memory) refund(c *pipeline.RateCheck) {
	e, _ := gcra(c.Rate, 1)
	s := m.shard(c.Key)
	s.mu.Lock()
	if tat, ok := s.m[c.Key]; ok {
		s.m[c.Key] = tat - e*cost(c)
	}
	s.mu.Unlock()
}

var _ pipeline.RateStore = (*Memory)(nil)
