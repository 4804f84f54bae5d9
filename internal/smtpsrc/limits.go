package smtpsrc

import (
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// anvil counts connections per client address, like Postfix's anvil: how
// many are open at once, and how many were opened in the current rate
// window (a fixed window that starts at the address's first connection).
// Clients in relay_networks are not counted (trusted, like Postfix's
// smtpd_client_event_limit_exceptions = $mynetworks); every other address
// is, loopback included.
type anvil struct {
	maxConns int
	maxRate  int
	window   time.Duration

	mu        sync.Mutex
	ips       map[netip.Addr]*anvilEntry
	lastSweep time.Time
}

type anvilEntry struct {
	conns       int
	windowStart time.Time
	opened      int // connections opened since windowStart
}

func newAnvil(maxConns, maxRate int, window time.Duration) *anvil {
	return &anvil{maxConns: maxConns, maxRate: maxRate, window: window, ips: make(map[netip.Addr]*anvilEntry)}
}

// Refusal reasons, also the log's "reason" values.
const (
	reasonBusy    = "max_connections"
	reasonPerIP   = "max_connections_per_ip"
	reasonRateIP  = "max_connection_rate_per_ip"
	reasonNoReply = "closed without reply" // suffix: the refusers were all busy
	reasonBudget  = "max_inflight_bytes"   // a message: the in-flight byte budget
)

// admit counts a new connection from ip, or returns the limit it is over
// ("" when admitted). An admitted connection must be released.
func (a *anvil) admit(ip netip.Addr, now time.Time) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sweepLocked(now)
	e := a.ips[ip]
	if e == nil {
		e = &anvilEntry{windowStart: now}
		a.ips[ip] = e
	}
	if now.Sub(e.windowStart) >= a.window {
		e.windowStart, e.opened = now, 0
	}
	if a.maxConns > 0 && e.conns >= a.maxConns {
		return reasonPerIP
	}
	if a.maxRate > 0 && e.opened >= a.maxRate {
		return reasonRateIP
	}
	e.conns++
	e.opened++
	return ""
}

// release counts a connection from ip closed.
func (a *anvil) release(ip netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e := a.ips[ip]; e != nil && e.conns > 0 {
		e.conns--
	}
}

// sweepLocked forgets addresses with no connection whose window has
// passed, at most once a window, so the map stays bounded by the
// addresses seen in about two windows.
func (a *anvil) sweepLocked(now time.Time) {
	if now.Sub(a.lastSweep) < a.window {
		return
	}
	a.lastSweep = now
	for ip, e := range a.ips {
		if e.conns == 0 && now.Sub(e.windowStart) >= a.window {
			delete(a.ips, ip)
		}
	}
}

// refusalLog logs connection refusals without flooding the log, and so
// that the counts add up: the first refusal after a quiet second is
// logged at once, later ones are counted and logged together (one line
// per reason, with the number refused) at the end of the second; no
// refusal goes uncounted, including connections closed without a reply.
type refusalLog struct {
	log    *slog.Logger
	limits map[string]string // reason → the limit that applied, for the log line

	mu      sync.Mutex
	pending map[string]*refusalCount
	last    time.Time // last flush
	timer   *time.Timer
	closed  bool
}

type refusalCount struct {
	n        int64
	lastAddr string
}

const refusalLogEvery = time.Second

// newRefusalLog logs refusals counted per reason; limits gives, per
// reason, the limit that applied (shown as "limit").
func newRefusalLog(log *slog.Logger, limits map[string]string) *refusalLog {
	return &refusalLog{log: log, limits: limits, pending: make(map[string]*refusalCount)}
}

func (r *refusalLog) note(reason, addr string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.pending[reason]
	if c == nil {
		c = &refusalCount{}
		r.pending[reason] = c
	}
	c.n++
	c.lastAddr = addr
	if r.timer != nil || r.closed {
		return
	}
	if since := time.Since(r.last); since >= refusalLogEvery {
		r.flushLocked()
		return
	} else {
		r.timer = time.AfterFunc(refusalLogEvery-since, r.flush)
	}
}

func (r *refusalLog) flush() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.timer = nil
	r.flushLocked()
}

func (r *refusalLog) flushLocked() {
	r.last = time.Now()
	for reason, c := range r.pending {
		base, _, _ := strings.Cut(reason, ", ")
		r.log.Warn("refused at a listener limit", "reason", reason, "refused", c.n,
			"limit", r.limits[base], "last_remote_addr", c.lastAddr)
		delete(r.pending, reason)
	}
}

// close logs what is pending; later refusals are not logged.
func (r *refusalLog) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	r.flushLocked()
	r.closed = true
}

// budget bounds the bytes of message data held in memory by all of a
// listener's transactions at once (MaxInflightBytes).
type budget struct {
	mu    sync.Mutex
	limit int64
	used  int64
}

// reserve takes n bytes, or reports false (taking nothing) when that
// would go over the limit. limit <= 0 means no limit.
func (b *budget) reserve(n int64) bool {
	if n <= 0 {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.limit > 0 && b.used+n > b.limit {
		return false
	}
	b.used += n
	return true
}

func (b *budget) release(n int64) {
	if n <= 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
}

func (b *budget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// conns returns the connections open from ip (for tests and metrics).
func (a *anvil) conns(ip netip.Addr) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e := a.ips[ip]; e != nil {
		return e.conns
	}
	return 0
}
