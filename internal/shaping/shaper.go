// Package shaping is Sluice's outbound traffic shaping: which "site" a
// recipient domain belongs to, the limits each site gets per egress
// source (connections, messages per connection, message rates,
// timeouts), adaptive changes when a site answers "slow down", egress
// pools with their warm-up schedules, and the events and metrics of it.
//
// A site is a set of MX hosts: every recipient domain whose MX hosts are
// the same (all domains hosted by one provider) shares one delivery queue
// and one set of limits. Its name is the sorted MX host names joined with
// ",", or a provider's name when a shaping rule matches the MX hosts by
// suffix, or the domain itself (no MX records, mx_rollup = false, or a DNS
// failure).
//
// The rules come from shaping files in KumoMTA's TOML format (a subset:
// see docs/shaping.md); the queue (internal/queue) asks a Shaper for the
// site of each domain, Acquires a Lease for each connection, Waits on it
// before each message and reports the replies it got with Observe.
//
// The rate limiters are golang.org/x/time/rate token buckets. The state
// (limiters, suspensions, warm-up counters) is per node and in memory: a
// restart starts the day's warm-up volume and every suspension afresh.
//
// A Shaper is safe for concurrent use.
package shaping

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/pipeline"
)

// DefaultSource is the name of the implicit egress source when no pool
// is configured: the host's own address and EHLO name.
const DefaultSource = "default"

// Source is one egress source: the local address connections leave from
// and the EHLO name they use.
type Source struct {
	Name    string
	Address netip.Addr // zero: the system chooses
	HELO    string     // "": the delivery hostname
	// Warmup, when set, caps the messages this source sends per UTC day
	// (every site together) while the schedule lasts.
	Warmup *Warmup
}

// Warmup is a daily volume schedule for a new source: from Start, each
// step holds Daily messages per day for Days days; after the last step
// the source is unlimited.
type Warmup struct {
	Start time.Time
	Steps []WarmupStep
}

// WarmupStep is a stretch of the schedule.
type WarmupStep struct {
	Days  int
	Daily int
}

// Limit returns the daily cap on day now, or -1 when there is none.
func (w *Warmup) Limit(now time.Time) int {
	if w == nil {
		return -1
	}
	day := int(now.Sub(w.Start) / (24 * time.Hour))
	if now.Before(w.Start) {
		day = 0
	}
	for _, s := range w.Steps {
		if day < s.Days {
			return s.Daily
		}
		day -= s.Days
	}
	return -1
}

// Options configure a Shaper.
type Options struct {
	// Rules are the parsed shaping files; nil means the built-in defaults
	// only.
	Rules *Rules
	// Resolver looks up MX records to name sites. Required.
	Resolver dnsx.Resolver
	// Sources and Pools are the egress configuration. Without pools there
	// is one pool "" holding the DefaultSource. The pool "" is the
	// default pool: DefaultPool's sources, or the DefaultSource.
	Sources     []Source
	Pools       map[string][]string
	DefaultPool string
	// Defaults are the limits when no rule sets them: ConnectionLimit
	// (sluice.delivery max_per_destination), MaxDeliveriesPerConnection
	// (max_messages_per_conn), IdleTimeout.
	Defaults Params
	// Emit records an event (the server writes it to the spool); nil
	// drops events.
	Emit func(*pipeline.Event)
	// Node is copied into events.
	Node   string
	Logger *slog.Logger
	// Metrics registers the shaping metrics; nil registers none.
	Metrics prometheus.Registerer
	Now     func() time.Time // tests; default time.Now
}

// Shaper holds the shaping state of a node.
type Shaper struct {
	o     Options
	log   *slog.Logger
	rules *Rules

	// lookup shares one MX lookup among concurrent callers of Site for
	// the same domain (a burst of mail to a new domain asks once).
	lookup     singleflight.Group
	mu         sync.Mutex
	sites      map[string]*siteInfo // domain → site
	entries    map[string][]*Entry  // site → its rule entries, as last resolved
	entrySites map[string]*siteInfo // shaping file domain → site (without entries)
	paths      map[string]*path     // site|source → state
	susp       map[string]time.Time // site → suspended until (every source)
	sources    map[string]*sourceState
	pools      map[string][]*sourceState
	rr         map[string]int // pool → next source
	timers     map[*time.Timer]struct{}
	stopped    bool
	// pathSweepAt is the size of paths at which pathLocked next forgets
	// idle paths (sweep.go).
	pathSweepAt int

	changes  *prometheus.CounterVec
	delayed  *prometheus.CounterVec
	suspGage prometheus.Gauge
}

type siteInfo struct {
	site    string
	entries []*Entry // default, provider, domain entries: in layer order
	expires time.Time
}

type sourceState struct {
	Source
	day  int // UTC day number of sent
	sent int
}

// path is the state of one site for one egress source.
type path struct {
	key, site, source string
	base              Params // rules without automation overrides
	eff               Params // base with overrides
	overrides         map[string]override
	automation        []Automation
	limiters          []*rate.Limiter
	conns             int
	suspendedUntil    time.Time
	hits              map[int][]time.Time // automation index → recent matches (Threshold rules)
}

type override struct {
	value any
	until time.Time
}

// New returns a Shaper. Errors: a pool naming an unknown source, a
// DefaultPool that does not exist.
func New(o Options) (*Shaper, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rules == nil {
		o.Rules = &Rules{Default: Entry{Name: "default", MXRollup: true}, Domains: map[string]*Entry{}}
	}
	s := &Shaper{o: o, log: o.Logger.With("component", "shaping"), rules: o.Rules,
		sites: map[string]*siteInfo{}, entries: map[string][]*Entry{}, entrySites: map[string]*siteInfo{}, paths: map[string]*path{}, susp: map[string]time.Time{},
		sources: map[string]*sourceState{}, pools: map[string][]*sourceState{}, rr: map[string]int{},
		timers: map[*time.Timer]struct{}{}, pathSweepAt: minPathSweep}
	for _, src := range o.Sources {
		s.sources[src.Name] = &sourceState{Source: src}
	}
	for name, members := range o.Pools {
		for _, m := range members {
			ss := s.sources[m]
			if ss == nil {
				return nil, errors.New("egress pool " + strconv.Quote(name) + ": unknown source " + strconv.Quote(m))
			}
			s.pools[name] = append(s.pools[name], ss)
		}
	}
	switch {
	case o.DefaultPool != "":
		p, ok := s.pools[o.DefaultPool]
		if !ok {
			return nil, errors.New("egress: default pool " + strconv.Quote(o.DefaultPool) + " does not exist")
		}
		s.pools[""] = p
	case s.pools[""] == nil:
		def := &sourceState{Source: Source{Name: DefaultSource}}
		if _, taken := s.sources[DefaultSource]; !taken {
			s.sources[DefaultSource] = def
		}
		s.pools[""] = []*sourceState{s.sources[DefaultSource]}
	}
	for _, w := range o.Rules.Warnings {
		s.log.Warn("shaping rule not applied", "detail", w)
	}
	if o.Metrics != nil {
		s.changes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sluice_shaping_changes_total",
			Help: "Adaptive shaping changes by kind: throttled (a limit lowered), suspended, resumed."}, []string{"kind"})
		s.delayed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sluice_shaping_delayed_total",
			Help: "Deliveries held back by shaping, by reason: rate, connections, suspended, warmup."}, []string{"reason"})
		s.suspGage = prometheus.NewGauge(prometheus.GaugeOpts{Name: "sluice_shaping_suspended",
			Help: "Sites (or site and egress source pairs) suspended now."})
		for _, c := range []prometheus.Collector{s.changes, s.delayed, s.suspGage} {
			if err := o.Metrics.Register(c); err != nil {
				return nil, err
			}
		}
		for _, k := range []string{"throttled", "suspended", "resumed"} {
			s.changes.WithLabelValues(k)
		}
		for _, k := range []string{"rate", "connections", "suspended", "warmup"} {
			s.delayed.WithLabelValues(k)
		}
	}
	return s, nil
}

// Stop cancels the resume timers. Suspensions then never end: call it at
// shutdown only.
func (s *Shaper) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	for t := range s.timers {
		t.Stop()
	}
	s.timers = nil
}

// HasPool reports whether pool exists ("" always does).
func (s *Shaper) HasPool(pool string) bool {
	_, ok := s.pools[pool]
	return ok
}

// siteTTL bounds how long a domain's site is remembered; past maxSites
// remembered domains, the stale ones are dropped.
const (
	maxSites    = 100_000
	siteTTLMin  = time.Minute
	siteTTLMax  = time.Hour
	siteTTLFail = 30 * time.Second
)

// Site returns the site of a recipient domain (see the package doc). It
// looks up MX records through the Resolver (a cached one, normally) and
// remembers the answer for the records' TTL (1 minute to 1 hour); a failed
// lookup makes the domain its own site for 30 seconds. Call it without
// holding locks of your own: it may wait for DNS.
func (s *Shaper) Site(ctx context.Context, domain string) string {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	now := s.o.Now()
	if si := s.cached(domain, now); si != nil {
		return si.site
	}
	v, _, _ := s.lookup.Do(domain, func() (any, error) {
		if si := s.cached(domain, now); si != nil { // a call that just ended stored it
			return si, nil
		}
		return s.store(domain, s.resolve(ctx, domain, now, true), now), nil
	})
	return v.(*siteInfo).site
}

// store remembers si as domain's site and returns it.
func (s *Shaper) store(domain string, si *siteInfo, now time.Time) *siteInfo {
	s.mu.Lock()
	if len(s.sites) >= maxSites {
		for d, x := range s.sites { // forget the stale ones
			if !now.Before(x.expires) {
				delete(s.sites, d)
			}
		}
	}
	s.sites[domain] = si
	s.entries[si.site] = si.entries
	s.mu.Unlock()
	return si
}

// CachedSite returns the site of domain when it is known and fresh,
// without waiting for DNS.
func (s *Shaper) CachedSite(domain string) (string, bool) {
	if si := s.cached(strings.ToLower(strings.TrimSuffix(domain, ".")), s.o.Now()); si != nil {
		return si.site, true
	}
	return "", false
}

// cached is domain's remembered site if it is still fresh, else nil.
func (s *Shaper) cached(domain string, now time.Time) *siteInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	if si := s.sites[domain]; si != nil && now.Before(si.expires) {
		return si
	}
	return nil
}

// resolve names domain's site and finds its rule entries. withDomains
// resolves the other domain entries' sites too (one level only).
func (s *Shaper) resolve(ctx context.Context, domain string, now time.Time, withDomains bool) *siteInfo {
	si := &siteInfo{site: domain, entries: []*Entry{&s.rules.Default}, expires: now.Add(siteTTLFail)}
	if e := s.rules.Domains[domain]; e != nil && !e.MXRollup {
		si.entries = append(si.entries, e)
		si.expires = now.Add(siteTTLMax)
		return si
	}
	var hosts []string
	if _, isLiteral := netip.ParseAddr(strings.Trim(domain, "[]")); isLiteral == nil || strings.HasPrefix(domain, "[") {
		// an address literal is its own site
	} else if res, err := s.o.Resolver.LookupMX(ctx, domain); err == nil {
		for _, m := range res.Records {
			h := strings.ToLower(strings.TrimSuffix(m.Host, "."))
			if h != "" && !slices.Contains(hosts, h) {
				hosts = append(hosts, h)
			}
		}
		ttl := min(max(res.TTL, siteTTLMin), siteTTLMax)
		si.expires = now.Add(ttl)
	} else if errors.Is(err, dnsx.ErrNoData) || errors.Is(err, dnsx.ErrNotFound) {
		si.expires = now.Add(siteTTLMin)
	}
	if len(hosts) > 0 {
		slices.Sort(hosts)
		si.site = strings.Join(hosts, ",")
		for _, p := range s.rules.Providers {
			if allMatch(hosts, p.MXSuffixes) {
				si.site = p.Name
				si.entries = append(si.entries, p)
				break
			}
		}
	}
	if withDomains {
		for name, e := range s.rules.Domains {
			if !e.MXRollup {
				continue
			}
			if name == domain || s.siteOfEntry(ctx, name, now) == si.site {
				si.entries = append(si.entries, e)
			}
		}
	} else if e := s.rules.Domains[domain]; e != nil {
		si.entries = append(si.entries, e)
	}
	return si
}

// siteOfEntry is the site of a shaping file's domain entry, cached like
// any domain.
func (s *Shaper) siteOfEntry(ctx context.Context, domain string, now time.Time) string {
	s.mu.Lock()
	si := s.entrySites[domain]
	s.mu.Unlock()
	if si != nil && now.Before(si.expires) {
		return si.site
	}
	si = s.resolve(ctx, domain, now, false)
	s.mu.Lock()
	s.entrySites[domain] = si
	s.mu.Unlock()
	return si.site
}

func allMatch(hosts, suffixes []string) bool {
	for _, h := range hosts {
		if !slices.ContainsFunc(suffixes, func(sfx string) bool {
			return strings.HasSuffix(h, sfx) || h == strings.TrimPrefix(sfx, ".")
		}) {
			return false
		}
	}
	return true
}

// pathLocked returns the state of site for source, building it from the
// rules on first use. s.mu held.
func (s *Shaper) pathLocked(site, source string) *path {
	key := site + "|" + source
	if p := s.paths[key]; p != nil {
		return p
	}
	if len(s.paths) >= s.pathSweepAt {
		s.sweepPathsLocked(s.o.Now())
	}
	entries := s.entries[site]
	if entries == nil {
		entries = []*Entry{&s.rules.Default}
	}
	base := s.o.Defaults.clone()
	for _, e := range entries {
		base.merge(e.Params)
	}
	var auto []Automation
	for _, e := range entries {
		if sp, ok := e.Sources[source]; ok {
			base.merge(sp)
		}
		auto = append(auto, e.Automation...)
	}
	p := &path{key: key, site: site, source: source, base: base, automation: auto}
	p.rebuild(time.Time{})
	s.paths[key] = p
	return p
}

// rebuild computes eff from base and the overrides active at now (all
// of them for the zero time), and new limiters when the rates changed.
func (p *path) rebuild(now time.Time) {
	eff := p.base.clone()
	for name, ov := range p.overrides {
		if !now.IsZero() && !now.Before(ov.until) {
			delete(p.overrides, name)
			continue
		}
		switch name {
		case "max_message_rate":
			t := ov.value.(Throttle)
			eff.MaxMessageRate = &t
		case "connection_limit":
			n := ov.value.(int)
			eff.ConnectionLimit = &n
		case "max_deliveries_per_connection":
			n := ov.value.(int)
			eff.MaxDeliveriesPerConnection = &n
		}
	}
	p.eff = eff
	p.limiters = p.limiters[:0]
	if eff.MaxMessageRate != nil {
		p.limiters = append(p.limiters, eff.MaxMessageRate.limiter())
	}
	names := make([]string, 0, len(eff.Additional))
	for k := range eff.Additional {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		p.limiters = append(p.limiters, eff.Additional[k].limiter())
	}
}

func intOr(p *int, def int) int {
	if p == nil {
		return def
	}
	return *p
}

// PoolConnections is how many connections a queue for site and pool may
// hold at once: the sum of its sources' connection limits.
func (s *Shaper) PoolConnections(site, pool string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, src := range s.pools[pool] {
		n += intOr(s.pathLocked(site, src.Name).eff.ConnectionLimit, 1)
	}
	return max(n, 1)
}

// Delay reasons, the "reason" label of sluice_shaping_delayed_total.
const (
	ReasonRate        = "rate"
	ReasonConnections = "connections"
	ReasonSuspended   = "suspended"
	ReasonWarmup      = "warmup"
)

// Lease is one connection's reservation on a site and egress source.
// Release it when the connection closes. A Lease is used by one worker
// at a time.
type Lease struct {
	s      *Shaper
	p      *path
	Source Source
	// pre is the turn Acquire took for the connection's first message
	// (one reservation per message rate, and one message of the source's
	// warm-up volume when preWarm): Wait uses it, Release gives it back
	// when it was not used. s.mu guards both.
	pre     []*rate.Reservation
	preWarm bool
}

// ErrUnknownPool is the Cause of Acquire's error for a route naming a
// pool that does not exist.
var ErrUnknownPool = errors.New("unknown egress pool")

// UnknownPool is the error for a route naming an egress pool that is
// not configured: 451 4.3.5, so the recipients are retried, not bounced.
func UnknownPool(pool string) error {
	return &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 3, 5},
		Message: "route names egress pool " + strconv.Quote(pool) + ", which is not configured", Cause: ErrUnknownPool}
}

// Acquire reserves a connection to site on one source of pool, round
// robin over the pool's sources, skipping those suspended for the site,
// at their connection limit, past their warm-up volume for the day, or
// whose message rates would hold the next message longer than the idle
// timeout (the site's idle_timeout, else maxWait: pass the connection
// idle timeout the caller gives Lease.Wait, so that Wait does not refuse
// a source Acquire chose). Of the sources left, the first (round robin)
// whose rates let a message go now is taken, else the one whose turn
// comes soonest. The lease holds that turn (and one message of the
// source's warm-up volume) for the connection's first message, which Wait
// then uses: a second connection asked for at once sees the turn taken,
// so no connection is opened that could not send within the idle timeout
// (docs/shaping.md, "Connections and idle time"). Release gives an unused
// turn back.
// When no source can take the connection, it returns a nil Lease and the
// earliest time one of the sources may (and that source's reason, for the
// caller's log). The error is a 451 4.3.5 for a pool that does not exist.
func (s *Shaper) Acquire(site, pool string, maxWait time.Duration) (*Lease, time.Time, string, error) {
	now := s.o.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	srcs, ok := s.pools[pool]
	if !ok {
		return nil, time.Time{}, "", UnknownPool(pool)
	}
	retry := time.Time{}
	reason := ""
	later := func(t time.Time, why string) {
		if retry.IsZero() || t.Before(retry) {
			retry, reason = t, why
		}
	}
	if until, ok := s.susp[site]; ok && now.Before(until) {
		s.count(ReasonSuspended)
		return nil, until, ReasonSuspended, nil
	}
	start := s.rr[pool]
	pick, pickDelay := -1, time.Duration(0)
	for i := range srcs {
		src := srcs[(start+i)%len(srcs)]
		p := s.pathLocked(site, src.Name)
		switch {
		case now.Before(p.suspendedUntil):
			later(p.suspendedUntil, ReasonSuspended)
			continue
		case p.conns >= intOr(p.eff.ConnectionLimit, 1):
			later(now.Add(250*time.Millisecond), ReasonConnections)
			continue
		case src.warmupLeft(now) == 0:
			later(nextUTCDay(now), ReasonWarmup)
			continue
		}
		delay := p.rateDelay(now)
		bound := maxWait
		if p.eff.IdleTimeout != nil && *p.eff.IdleTimeout > 0 {
			bound = *p.eff.IdleTimeout
		}
		if delay > bound {
			later(now.Add(delay), ReasonRate)
			continue
		}
		if pick < 0 || delay < pickDelay {
			pick, pickDelay = i, delay
		}
		if delay == 0 {
			break
		}
	}
	if pick < 0 {
		s.count(reason)
		return nil, retry, reason, nil
	}
	src := srcs[(start+pick)%len(srcs)]
	p := s.pathLocked(site, src.Name)
	p.conns++
	s.rr[pool] = (start + pick + 1) % len(srcs)
	l := &Lease{s: s, p: p, Source: src.Source}
	for _, lim := range p.limiters {
		l.pre = append(l.pre, lim.ReserveN(now, 1))
	}
	if src.Warmup != nil && src.warmupLeft(now) > 0 {
		src.sent++
		l.preWarm = true
	}
	return l, time.Time{}, "", nil
}

// unprepay gives back the turn Acquire took and Wait did not use. s.mu
// held.
func (l *Lease) unprepay(now time.Time) {
	for _, r := range l.pre {
		r.CancelAt(now)
	}
	l.pre = nil
	if l.preWarm {
		l.preWarm = false
		if src := l.s.sources[l.p.source]; src != nil && src.sent > 0 {
			src.sent--
		}
	}
}

// rateDelay is how long the next message on p would wait for its turn
// under every message rate, without taking the turn. s.mu held.
func (p *path) rateDelay(now time.Time) time.Duration {
	var delay time.Duration
	for _, lim := range p.limiters {
		if tok := lim.TokensAt(now); tok < 1 {
			secs := (1 - tok) / float64(lim.Limit())
			delay = max(delay, time.Duration(math.Ceil(secs*float64(time.Second))))
		}
	}
	return delay
}

func nextUTCDay(now time.Time) time.Time {
	y, m, d := now.UTC().Date()
	return time.Date(y, m, d+1, 0, 0, 0, 0, time.UTC)
}

// warmupLeft is how many messages the source may still send today; -1
// for no cap. s.mu held.
func (ss *sourceState) warmupLeft(now time.Time) int {
	lim := ss.Warmup.Limit(now)
	if lim < 0 {
		return -1
	}
	if day := int(now.Unix() / 86400); day != ss.day {
		ss.day, ss.sent = day, 0
	}
	return max(lim-ss.sent, 0)
}

func (s *Shaper) count(reason string) {
	if s.delayed != nil && reason != "" {
		s.delayed.WithLabelValues(reason).Inc()
	}
}

// Site returns the lease's site.
func (l *Lease) Site() string { return l.p.site }

// MaxPerConnection is how many messages one connection may carry.
func (l *Lease) MaxPerConnection() int {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	return intOr(l.p.eff.MaxDeliveriesPerConnection, math.MaxInt)
}

// Timeouts returns the site's connect, data and idle timeouts; zero for
// those the rules leave unset.
func (l *Lease) Timeouts() (connect, data, idle time.Duration) {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	d := func(p *time.Duration) time.Duration {
		if p == nil {
			return 0
		}
		return *p
	}
	return d(l.p.eff.ConnectTimeout), d(l.p.eff.DataTimeout), d(l.p.eff.IdleTimeout)
}

// Wait blocks until one more message may go over this lease's connection
// (every message rate throttle of the site and source) and counts it
// against the source's warm-up volume. It does not wait longer than
// maxWait: when the site is suspended, the source is over its warm-up
// volume or its connection limit was lowered under the connections open,
// or the rate would hold the message longer than maxWait, it returns
// when to try again instead, and the caller closes the connection and
// puts the message back; the reason is one of the Reason constants. ctx ends the wait early (ctx.Err()).
//
// sluice_shaping_delayed_total counts a message that Wait holds on its
// connection (reason "rate"); when Wait sends the caller away, it does
// not count: the caller asks Acquire again, which counts the hold once if
// no source can take the message.
func (l *Lease) Wait(ctx context.Context, maxWait time.Duration) (time.Time, string, error) {
	s := l.s
	now := s.o.Now()
	s.mu.Lock()
	p := l.p
	back := func(t time.Time, why string) (time.Time, string, error) {
		l.unprepay(now)
		s.mu.Unlock()
		return t, why, nil
	}
	if until, ok := s.susp[p.site]; ok && now.Before(until) {
		return back(until, ReasonSuspended)
	}
	if now.Before(p.suspendedUntil) {
		return back(p.suspendedUntil, ReasonSuspended)
	}
	if p.conns > intOr(p.eff.ConnectionLimit, 1) {
		return back(now.Add(250*time.Millisecond), ReasonConnections)
	}
	src := s.sources[p.source]
	if !l.preWarm && src != nil && src.warmupLeft(now) == 0 {
		return back(nextUTCDay(now), ReasonWarmup)
	}
	var delay time.Duration
	rs := l.pre
	if rs == nil {
		rs = make([]*rate.Reservation, 0, len(p.limiters))
		for _, lim := range p.limiters {
			rs = append(rs, lim.ReserveN(now, 1))
		}
	}
	for _, r := range rs {
		delay = max(delay, r.DelayFrom(now))
	}
	l.pre = rs
	if delay > maxWait {
		return back(now.Add(delay), ReasonRate)
	}
	if !l.preWarm && src != nil && src.Warmup != nil {
		src.sent++
	}
	l.pre, l.preWarm = nil, false
	s.mu.Unlock()
	if delay > 0 {
		s.count(ReasonRate)
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return time.Time{}, "", ctx.Err()
		}
	}
	return time.Time{}, "", nil
}

// Release gives the connection back, and the turn Acquire took for it
// when no message used it (the dial failed). Call it once.
func (l *Lease) Release() {
	l.s.mu.Lock()
	l.unprepay(l.s.o.Now())
	l.p.conns--
	l.s.mu.Unlock()
}

// Observe looks at the replies of one delivery attempt (or a failed
// connection) on this lease: each that matches an automation rule of the
// site applies the rule's actions for its duration. remote is the server
// that answered. Replies that are not failures are skipped by the caller.
func (l *Lease) Observe(replies []*pipeline.Response, remote *pipeline.Remote) {
	if len(replies) == 0 || len(l.p.automation) == 0 {
		return
	}
	for _, r := range replies {
		if r == nil {
			continue
		}
		text := strconv.Itoa(r.Code) + " " + r.Enhanced + " " + r.Text
		if r.Enhanced == "" {
			text = strconv.Itoa(r.Code) + " " + r.Text
		}
		for i := range l.p.automation {
			a := &l.p.automation[i]
			if slices.ContainsFunc(a.Regex, func(re *regexp.Regexp) bool { return re.MatchString(text) }) {
				l.s.apply(l.p, i, a, r, remote)
			}
		}
	}
}

// apply runs a matched rule's actions on p.
func (s *Shaper) apply(p *path, idx int, a *Automation, r *pipeline.Response, remote *pipeline.Remote) {
	now := s.o.Now()
	until := now.Add(a.Duration)
	var evs []*pipeline.Event
	s.mu.Lock()
	if th := a.Threshold; th != nil {
		// Fire at the Quantity-th match within one Period: keep the
		// match times of the last Period (at most Quantity of them, in
		// place: the slice never grows past Quantity), and forget them
		// when the rule fires; the sweep of idle paths drops those that
		// have aged out (sweep.go).
		if p.hits == nil {
			p.hits = map[int][]time.Time{}
		}
		hits := p.hits[idx]
		drop := 0
		for drop < len(hits) && now.Sub(hits[drop]) > th.Period {
			drop++
		}
		if drop > 0 || len(hits) == th.Quantity {
			drop = max(drop, len(hits)+1-th.Quantity)
			hits = hits[:copy(hits, hits[drop:])]
		}
		hits = append(hits, now)
		if len(hits) < th.Quantity {
			p.hits[idx] = hits
			s.mu.Unlock()
			return
		}
		delete(p.hits, idx)
	}
	for _, act := range a.Actions {
		switch act.Kind {
		case ActionSuspend:
			if now.Before(p.suspendedUntil) {
				p.suspendedUntil = until // extend quietly
				continue
			}
			p.suspendedUntil = until
			evs = append(evs, s.event(pipeline.EventShapingSuspended, p.site, p.source, a, act, r, remote, until))
			s.gauge(1)
			s.after(a.Duration, func() { s.resumePath(p, until) })
		case ActionSuspendSite:
			if cur, ok := s.susp[p.site]; ok && now.Before(cur) {
				s.susp[p.site] = until
				continue
			}
			s.susp[p.site] = until
			evs = append(evs, s.event(pipeline.EventShapingSuspended, p.site, "", a, act, r, remote, until))
			s.gauge(1)
			site := p.site
			s.after(a.Duration, func() { s.resumeSite(site, until) })
		case ActionSetConfig:
			if p.overrides == nil {
				p.overrides = map[string]override{}
			}
			cur, active := p.overrides[act.Name]
			p.overrides[act.Name] = override{value: act.Value, until: until}
			p.rebuild(now)
			if active && now.Before(cur.until) {
				continue
			}
			evs = append(evs, s.event(pipeline.EventShapingThrottled, p.site, p.source, a, act, r, remote, until))
			name := act.Name
			s.after(a.Duration, func() { s.resumeOverride(p, name, until) })
		}
	}
	s.mu.Unlock()
	for _, ev := range evs {
		s.emit(ev)
	}
}

// after runs f after d unless the Shaper stopped. s.mu held.
func (s *Shaper) after(d time.Duration, f func()) {
	if s.stopped {
		return
	}
	var t *time.Timer
	t = time.AfterFunc(d, func() {
		s.mu.Lock()
		if s.timers != nil {
			delete(s.timers, t)
		}
		s.mu.Unlock()
		f()
	})
	s.timers[t] = struct{}{}
}

// resumePath ends a suspension of p unless it was extended past until.
func (s *Shaper) resumePath(p *path, until time.Time) {
	s.mu.Lock()
	if p.suspendedUntil.After(until) {
		end := p.suspendedUntil
		s.after(end.Sub(s.o.Now()), func() { s.resumePath(p, end) })
		s.mu.Unlock()
		return
	}
	p.suspendedUntil = time.Time{}
	s.gauge(-1)
	ev := s.event(pipeline.EventShapingResumed, p.site, p.source, nil, Action{Kind: ActionSuspend}, nil, nil, time.Time{})
	s.mu.Unlock()
	s.emit(ev)
}

func (s *Shaper) resumeSite(site string, until time.Time) {
	s.mu.Lock()
	if cur := s.susp[site]; cur.After(until) {
		s.after(cur.Sub(s.o.Now()), func() { s.resumeSite(site, cur) })
		s.mu.Unlock()
		return
	}
	delete(s.susp, site)
	s.gauge(-1)
	ev := s.event(pipeline.EventShapingResumed, site, "", nil, Action{Kind: ActionSuspendSite}, nil, nil, time.Time{})
	s.mu.Unlock()
	s.emit(ev)
}

func (s *Shaper) resumeOverride(p *path, name string, until time.Time) {
	s.mu.Lock()
	if cur, ok := p.overrides[name]; ok && cur.until.After(until) {
		end := cur.until
		s.after(end.Sub(s.o.Now()), func() { s.resumeOverride(p, name, end) })
		s.mu.Unlock()
		return
	}
	delete(p.overrides, name)
	p.rebuild(time.Time{})
	ev := s.event(pipeline.EventShapingResumed, p.site, p.source, nil, Action{Kind: ActionSetConfig, Name: name}, nil, nil, time.Time{})
	s.mu.Unlock()
	s.emit(ev)
}

func (s *Shaper) gauge(d float64) {
	if s.suspGage != nil {
		s.suspGage.Add(d)
	}
}

// event builds a shaping event (docs/shaping.md#events). s.mu held.
func (s *Shaper) event(typ, site, source string, a *Automation, act Action, r *pipeline.Response, remote *pipeline.Remote, until time.Time) *pipeline.Event {
	md := map[string]string{"site": site, "action": act.Kind}
	if source != "" {
		md["egress_source"] = source
	}
	if act.Name != "" {
		md["config"] = act.Name
		if act.Value != nil {
			switch v := act.Value.(type) {
			case Throttle:
				md["value"] = v.String()
			case int:
				md["value"] = strconv.Itoa(v)
			}
		}
	}
	if a != nil {
		md["rule"] = a.Where
	}
	if !until.IsZero() {
		md["until"] = until.UTC().Format(time.RFC3339)
	}
	ev := &pipeline.Event{Type: typ, Source: "shaping", Queue: site, Response: r, Metadata: md,
		Tags: []string{}, Node: s.o.Node}
	if remote != nil && remote.Host != "" {
		rm := *remote
		ev.Remote = &rm
	}
	kind := map[string]string{pipeline.EventShapingThrottled: "throttled", pipeline.EventShapingSuspended: "suspended",
		pipeline.EventShapingResumed: "resumed"}[typ]
	if s.changes != nil {
		s.changes.WithLabelValues(kind).Inc()
	}
	attrs := []any{"event", typ, "site", site, "egress_source", source, "action", act.Kind}
	if act.Name != "" {
		attrs = append(attrs, "config", act.Name)
	}
	if !until.IsZero() {
		attrs = append(attrs, "until", until)
	}
	s.log.Info("shaping changed", attrs...)
	return ev
}

func (s *Shaper) emit(ev *pipeline.Event) {
	if s.o.Emit != nil {
		s.o.Emit(ev)
	}
}
