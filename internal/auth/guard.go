package auth

import (
	"net/netip"
	"sync"
	"time"
)

// GuardOptions configures a Guard. Zero fields take the defaults.
type GuardOptions struct {
	// Free is how many failures a client address or user name may have
	// before it is locked out. Default 5.
	Free int
	// Base is the first lockout; each further failure doubles it.
	// Default 1s.
	Base time.Duration
	// Max caps a lockout. Default 15 minutes.
	Max time.Duration
	// Forget: a key with no failure for this long starts over. Default
	// 1 hour.
	Forget time.Duration
	// MaxKeys bounds the memory: past it, forgotten keys are dropped,
	// then arbitrary ones. Default 65536 (a few MiB).
	MaxKeys int
	Now     func() time.Time
}

// Guard limits failed authentications across sessions, per client
// address and per user name, with exponential lockout: after Free
// failures a key is locked for Base, then 2*Base, 4*Base ... up to Max,
// counted from its last failure. It lives in memory (one node; a restart
// forgets it) and holds at most MaxKeys keys. Safe for concurrent use.
//
// Locking out a user name lets an attacker lock a user out from anywhere
// (a denial of service against that user); the per-user limit is there to
// stop slow password guessing from many addresses, and its lockouts are
// short (Max).
type Guard struct {
	o  GuardOptions
	mu sync.Mutex
	m  map[string]*strike
}

type strike struct {
	fails int
	last  time.Time
	until time.Time
}

// NewGuard returns a Guard.
func NewGuard(o GuardOptions) *Guard {
	if o.Free <= 0 {
		o.Free = 5
	}
	if o.Base <= 0 {
		o.Base = time.Second
	}
	if o.Max <= 0 {
		o.Max = 15 * time.Minute
	}
	if o.Forget <= 0 {
		o.Forget = time.Hour
	}
	if o.MaxKeys <= 0 {
		o.MaxKeys = 65536
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Guard{o: o, m: map[string]*strike{}}
}

func ipKey(ip netip.Addr) string {
	if ip.Is6() && !ip.Is4In6() {
		// One client usually owns a /64: count the prefix.
		p, _ := ip.Prefix(64)
		return "ip:" + p.String()
	}
	return "ip:" + ip.Unmap().String()
}

func userKey(user string) string { return "user:" + user }

// Locked reports how long ip or user remains locked out (0: not locked).
// user "" checks the address only.
func (g *Guard) Locked(ip netip.Addr, user string) time.Duration {
	now := g.o.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	var d time.Duration
	if s := g.m[ipKey(ip)]; s != nil && s.until.After(now) {
		d = s.until.Sub(now)
	}
	if user != "" {
		if s := g.m[userKey(user)]; s != nil && s.until.After(now) {
			d = max(d, s.until.Sub(now))
		}
	}
	return d
}

// Fail records a failure for ip and user ("" : none) and returns the
// lockout it causes (0: none yet).
func (g *Guard) Fail(ip netip.Addr, user string) time.Duration {
	now := g.o.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	d := g.failLocked(ipKey(ip), now)
	if user != "" {
		d = max(d, g.failLocked(userKey(user), now))
	}
	return d
}

func (g *Guard) failLocked(k string, now time.Time) time.Duration {
	s := g.m[k]
	if s != nil && now.Sub(s.last) > g.o.Forget {
		s = nil
	}
	if s == nil {
		g.makeRoom(now)
		s = &strike{}
		g.m[k] = s
	}
	s.fails++
	s.last = now
	over := s.fails - g.o.Free
	if over <= 0 {
		return 0
	}
	d := g.o.Max
	if over <= 30 {
		d = min(g.o.Base<<(over-1), g.o.Max)
	}
	s.until = now.Add(d)
	return d
}

// Succeed forgets user's failures (a user who logs in is not under
// attack any more); the address keeps its count, so an attacker who owns
// one account cannot reset its address's count with it.
func (g *Guard) Succeed(user string) {
	g.mu.Lock()
	delete(g.m, userKey(user))
	g.mu.Unlock()
}

// Len is the number of keys remembered.
func (g *Guard) Len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.m)
}

func (g *Guard) makeRoom(now time.Time) {
	if len(g.m) < g.o.MaxKeys {
		return
	}
	for k, s := range g.m {
		if now.Sub(s.last) > g.o.Forget && !s.until.After(now) {
			delete(g.m, k)
		}
	}
	for k := range g.m { // still full: drop arbitrary keys
		if len(g.m) < g.o.MaxKeys {
			break
		}
		delete(g.m, k)
	}
}
