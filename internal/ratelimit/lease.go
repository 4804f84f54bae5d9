package ratelimit

import (
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

// Leased allowance: the Redis store takes a key's events from Redis in
// leases of up to L at once (one script run charges them all, as GCRA
// cost L) and spends them on this node without a round trip, until they
// are spent or the lease expires. Every event the node admits was charged
// in Redis before, so the cluster-wide rate never exceeds the limit; the
// cost is under-admission: events leased and not spent before the lease
// expires are lost (at most L per key per node per LeaseTTL).
const (
	// DefaultLease is the largest lease when pipeline.Redis.RateLease is
	// 0 (sluice.redis's ratelimit_lease defaults to the same; it takes 1
	// to 1000): 32 events turn the benchmark's 0.23 round trips
	// per message (20 sessions, 3 keys) into 0.031, and hold at most
	// 50 ms of a fast key's rate (leaseWindow).
	DefaultLease = 32
	// leaseWindow sizes a key's lease: the events the key's rate allows
	// in 50 ms, so that a lease is a small part of a second of the limit
	// and slow keys (under 40 events per second) get no lease at all.
	leaseWindow = 50 * time.Millisecond
	// LeaseTTL is how long leased events stay usable on the node: long
	// enough that a node sending a key below its limit spends each lease
	// (a node leasing 32 events every 50 ms and spending 3 would charge
	// Redis ten times what it sends), short enough that allowance a node
	// stopped using goes back to the cluster soon (unspent, it is lost:
	// Redis already counted it).
	LeaseTTL = time.Second
	// maxLeaseKeys bounds the keys with a lease held at once (about 100
	// bytes each); past it a new key is checked without a lease (as with
	// lease 1) until expired leases are dropped.
	maxLeaseKeys = 100_000
)

// leaseSize is the most events one Redis run charges a key of rate r
// for, at most most (sluice.redis's ratelimit_lease): the events r allows
// in leaseWindow, and at most a quarter of its burst (so a lease never
// holds more than a quarter of what another node could spend at once),
// and at least 1. 1 means no lease: each event is checked in Redis as it
// comes, exactly as without leasing.
func leaseSize(r pipeline.Rate, most int) int64 {
	if most <= 1 || r.Period <= 0 {
		return 1
	}
	l := int64(r.Limit) * int64(leaseWindow) / int64(r.Period) // Limit ≤ 1e9: no overflow
	l = min(l, int64(most), int64(r.EffectiveBurst()/4))
	return max(l, 1)
}

// lease is a key's allowance on this node. Guarded by Redis.lmu.
//
// Its size adapts to how fast the node spends the key: a lease that
// expires with events unspent halves the next (down to 1: no lease),
// and a key the node needs Redis for again within a lease's lifetime
// doubles it (up to the key's leaseSize). A node sending a key less than
// once a second so stops charging Redis a whole lease per message (with
// many such nodes, what they lost could use up the key's whole rate).
type lease struct {
	avail   int64 // events leased and not spent
	expires int64 // node clock (Redis.now); avail is void from then on
	remote  int64 // the Remaining Redis gave with the lease
	size    int64 // the most to ask for the key's next lease (≥ 1)
}

// expire drops l's unspent events once it has expired (Redis counted
// them) and halves the next lease. s.lmu is held.
func (s *Redis) expire(l *lease) {
	if l.avail > 0 {
		s.lose(l.avail)
		l.avail = 0
		l.size = max(l.size/2, 1)
	}
}

// hold takes, for each check of c not yet taken and not yet held, its
// cost from its key's lease; a check whose lease is missing, expired or
// too small stays to be sent to Redis, and when its key cannot have a
// lease (the map is full) it asks Redis for its cost only. It reports
// whether every check of c is now held (c needs no round trip). c's
// caller must not be waiting on a batch that includes c.
func (s *Redis) hold(c *call) bool {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	now := s.now()
	all := true
	for i := range c.items {
		it := &c.items[i]
		if it.held || it.lease <= it.n {
			all = all && it.held
			continue
		}
		l := s.leases[it.key]
		if l != nil && l.expires <= now {
			s.expire(l)
		}
		if l != nil && l.expires > now && l.avail >= it.n {
			l.avail -= it.n
			it.held, it.remaining = true, l.avail+l.remote
			continue
		}
		all = false
		if l != nil {
			it.lease = max(it.n, min(it.lease, l.size))
		}
		if l == nil && len(s.leases) >= maxLeaseKeys {
			if now >= s.fullSweep { // at most one sweep per LeaseTTL while full
				s.sweep(now)
				s.fullSweep = now + int64(LeaseTTL)
			}
			if len(s.leases) >= maxLeaseKeys {
				it.lease = it.n
			}
		}
	}
	return all
}

// settle applies the outcome of c's round trip to the leases: when c was
// allowed, each key Redis charged more than its cost keeps the rest as a
// lease (added to what it holds, valid LeaseTTL from now); when c was
// refused or failed, the checks held for it go back to their leases.
func (s *Redis) settle(c *call) {
	ok := c.err == nil
	for j := 0; ok && j < len(c.res); j += 3 {
		ok = c.res[j] == 1
	}
	held := false
	for i := range c.items {
		held = held || c.items[i].held
	}
	if ok && c.res == nil || !ok && !held {
		return
	}
	s.lmu.Lock()
	defer s.lmu.Unlock()
	now := s.now()
	if !ok {
		s.unhold(c, now)
		return
	}
	j := 0
	for i := range c.items {
		it := &c.items[i]
		if it.held {
			continue
		}
		granted, remote := c.res[3*j+2], c.res[3*j+1]
		j++
		l := s.leases[it.key]
		if granted <= it.n && l == nil {
			continue
		}
		extra := granted - it.n
		if s.leasedEvents != nil && extra > 0 {
			s.leasedEvents.Add(float64(extra))
		}
		if l == nil {
			if len(s.leases) >= s.sweepAt {
				s.sweep(now)
				s.sweepAt = max(2*len(s.leases), minSweep)
			}
			if len(s.leases) >= maxLeaseKeys {
				s.lose(extra) // full (hold asks for no more leases meanwhile)
				continue
			}
			l = &lease{size: it.lease}
			s.leases[it.key] = l
		} else if l.expires <= now {
			s.expire(l)
		} else {
			// Redis again within the lease's lifetime: the node spends
			// the key faster than its lease lasts.
			l.size = min(2*l.size, it.most)
		}
		l.avail += extra
		l.expires = now + int64(LeaseTTL)
		l.remote = remote
	}
}

// unhold gives c's held checks back to their leases (unless a lease
// expired meanwhile: then they are lost, as its other events). s.lmu is
// held.
func (s *Redis) unhold(c *call, now int64) {
	for i := range c.items {
		it := &c.items[i]
		if !it.held { // (held stays set: it tells results which checks were sent)
			continue
		}
		if l := s.leases[it.key]; l != nil && l.expires > now {
			l.avail += it.n
		} else {
			s.lose(it.n)
		}
	}
}

// release is unhold for a call that will not be sent (its caller went
// away while handed a batch).
func (s *Redis) release(c *call) {
	s.lmu.Lock()
	s.unhold(c, s.now())
	s.lmu.Unlock()
}

// sweep drops expired leases. s.lmu is held.
func (s *Redis) sweep(now int64) {
	for k, l := range s.leases {
		if l.expires <= now {
			s.lose(l.avail)
			delete(s.leases, k)
		}
	}
}

// lose counts n leased events that expired unspent (Redis counted them).
// s.lmu is held.
func (s *Redis) lose(n int64) {
	if s.lostEvents != nil && n > 0 {
		s.lostEvents.Add(float64(n))
	}
}

// Held returns the events this node holds leased and unspent, over all
// keys (expired leases not counted). For tests and diagnostics.
func (s *Redis) Held() int64 {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	now, n := s.now(), int64(0)
	for _, l := range s.leases {
		if l.expires > now {
			n += l.avail
		}
	}
	return n
}
