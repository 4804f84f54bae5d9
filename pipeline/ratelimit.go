package pipeline

import (
	"context"
	"time"
)

// Rate is a GCRA limit (the generic cell rate algorithm, a leaky bucket
// kept as one timestamp per key): Limit events per Period on average, at
// most Burst of them at once. Burst 0 means Limit (a fresh key may spend
// the whole period's allowance at once, then refills smoothly).
type Rate struct {
	Limit  int
	Period time.Duration
	Burst  int
}

// EffectiveBurst returns Burst, or Limit when Burst is 0.
func (r Rate) EffectiveBurst() int {
	if r.Burst > 0 {
		return r.Burst
	}
	return r.Limit
}

// RateCheck asks whether N more events for Key fit Rate. Stage and Limit
// name the asker for metrics (sluice_ratelimit_checks_total): both must
// come from the configuration (stage and limit names), never from
// message data, so that label values stay bounded.
type RateCheck struct {
	Key   string // the store key; callers namespace it (stage, limit, rate)
	Rate  Rate
	N     int // events this check costs; 0 counts as 1
	Stage string
	Limit string
}

// RateResult is the answer to one RateCheck.
type RateResult struct {
	Allowed bool
	// RetryAfter is how long until the check would be allowed, when it is
	// not; -1 when it never can be (N is larger than the burst).
	RetryAfter time.Duration
	// Remaining is how many more events of cost 1 the key allows now.
	Remaining int
}

// RateStore keeps GCRA state. Check decides every check of one call
// together: either all are allowed and all are charged, or none is
// charged (a message refused by one limit does not use up the others).
// out must have len(checks) entries; each gets its own answer. Check is
// safe for concurrent use. An error means the store could not answer
// (Redis unreachable): the caller applies its fail-open or fail-closed
// rule, and out is then undefined.
type RateStore interface {
	Check(ctx context.Context, checks []RateCheck, out []RateResult) error
}

// RateLimits are the node's rate-limit stores (Env.RateLimits): shared by
// every stage, every Lua state and every pipeline of a node, so limits
// are node-wide and survive a reload. Memory is never nil; Redis is nil
// when sluice.redis is not configured.
type RateLimits struct {
	Memory RateStore
	Redis  RateStore
}

// Default is the store sluice.ratelimit.check uses: Redis when
// configured, else memory.
func (l *RateLimits) Default() RateStore {
	if l.Redis != nil {
		return l.Redis
	}
	return l.Memory
}
