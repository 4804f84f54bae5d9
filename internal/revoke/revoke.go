// Package revoke keeps a node's token revocations (docs/auth.md
// "Revocation") and shares them with every other node through Redis.
//
// A revocation names one token id (jti) of a tenant, or gives a tenant a
// "not before" time: every token of the tenant issued (iat) earlier is
// refused. List implements token.Revoker: Revoked reads an immutable
// snapshot through an atomic pointer (two map lookups, no lock, no I/O),
// so it runs on every verification, cached claims included. Writers
// (rare) copy the snapshot.
//
// Where revocations live:
//
//   - in memory (the snapshot);
//   - in the node's spool (spool.PutRevocations), loaded by Load before
//     the listeners accept, so a restarted node honours them without
//     Redis;
//   - with sluice.redis, in Redis: a sorted set <prefix>revoked:ids of
//     "tenant:jti" members scored by the unix milliseconds after which the
//     entry may be dropped (revocation time + max_lifetime + skew), a hash
//     <prefix>revoked:tenants of tenant → not-before unix milliseconds
//     (only ever raised), and the pub/sub channel <prefix>revoked that
//     announces each new revocation as JSON (spool.Revocation).
//
// Every node subscribes to the channel, and resynchronises with Redis
// every Options.Resync (default 10 s), whenever its subscription is
// (re)established, and at Start: it writes its whole set into Redis (so a
// revocation made while Redis was down, or lost by a Redis restart
// without persistence, reaches Redis), announces the revocations Redis
// had not seen, then reads the whole set back and merges it. Merging is
// a union (ids) and a maximum (tenant times), so the order in which nodes
// learn things does not matter. A Redis that is down never fails a
// revocation: it applies on this node at once and reaches the others
// when Redis is back.
//
// Why by hand: go-redis gives the commands and pub/sub; the merge rules
// and the spool copy are Sluice's own.
package revoke

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-mta/sluice/internal/logx"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/token"
	"github.com/sluice-mta/sluice/pipeline"
)

// DefaultResync is how often a node resynchronises with Redis.
const DefaultResync = 10 * time.Second

// Sources of a revocation (the event's source).
const (
	SourceAPI = "api" // the HTTP API
	SourceCLI = "cli" // sluice token revoke (through the HTTP API)
)

// MaxIDs bounds the token ids a node holds as revoked (each is kept for
// the tokens' max_lifetime): past it RevokeID is ErrTooMany, so that a
// key with the tokens scope cannot grow every node's list, and the Redis
// resync, without bound. Revoking a tenant's tokens by time has no bound.
const MaxIDs = 100_000

// ErrTooMany is returned by RevokeID when MaxIDs ids are held.
var ErrTooMany = errors.New("revoke: too many revoked token ids are held; revoke the tenant's tokens by time instead")

// ErrFuture is returned for a tenant "not before" time in the future.
var ErrFuture = errors.New("revoke: the time is in the future")

// Options configure New.
type Options struct {
	// Spool keeps the revocations across restarts; nil keeps them in
	// memory only (tests).
	Spool *spool.Spool
	// Redis shares them with the other nodes; nil: this node only.
	Redis *pipeline.Redis
	// MaxLifetime is the longest token lifetime (sluice.tokens
	// max_lifetime); an id entry is kept MaxLifetime + token.DefaultLeeway
	// after the revocation. 0: token.DefaultLifetime.
	MaxLifetime time.Duration
	// Resync is the period of the full resynchronisation with Redis
	// (0: DefaultResync).
	Resync time.Duration
	Logger *slog.Logger
	// Metrics registers sluice_token_revocations_total and
	// sluice_token_revocation_sync_errors_total (nil: none).
	Metrics prometheus.Registerer
}

// snapshot is immutable once stored.
type snapshot struct {
	// ids maps a revoked jti to the tenants it was revoked for (almost
	// always one): one string lookup per request, the tenant compared
	// only on a hit.
	ids     map[string][]string
	tenants map[string]time.Time // → not before
}

// List is the node's revocation list. Revoked is safe for concurrent use
// and lock-free; the other methods are safe for concurrent use.
type List struct {
	snap atomic.Pointer[snapshot]

	mu      sync.Mutex                  // writers
	entries map[string]spool.Revocation // by key(), what the snapshot holds
	pending map[string]spool.Revocation // not yet announced through Redis
	o       Options
	keep    time.Duration
	now     func() time.Time
	log     *slog.Logger
	sample  *logx.Sampler
	kick    chan struct{}
	maxIDs  int // MaxIDs; tests lower it
	added   *prometheus.CounterVec
	syncErr prometheus.Counter

	stop context.CancelFunc
	done chan struct{}
	ps   *redis.PubSub // the channel's subscription (with Redis)
	// subscriptions counts the (re)established subscriptions (tests).
	subscriptions atomic.Int64
}

var _ token.Revoker = (*List)(nil)

// New makes an empty list; Load fills it from the spool, Start begins the
// Redis synchronisation and the pruning of expired entries.
func New(o Options) (*List, error) {
	if o.MaxLifetime <= 0 {
		o.MaxLifetime = token.DefaultLifetime
	}
	if o.Resync <= 0 {
		o.Resync = DefaultResync
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	l := &List{maxIDs: MaxIDs, entries: map[string]spool.Revocation{}, pending: map[string]spool.Revocation{}, o: o,
		keep: o.MaxLifetime + token.DefaultLeeway, now: time.Now, log: o.Logger.With("component", "revoke"),
		sample: logx.NewSampler(time.Minute), kick: make(chan struct{}, 1)}
	l.snap.Store(&snapshot{})
	l.added = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sluice_token_revocations_total",
		Help: "Token revocations this node applied, by kind (id, tenant) and origin (local: made here; remote: learned from another node)."},
		[]string{"kind", "origin"})
	l.syncErr = prometheus.NewCounter(prometheus.CounterOpts{Name: "sluice_token_revocation_sync_errors_total",
		Help: "Failed exchanges of token revocations with Redis (writes, reads, announcements)."})
	if o.Metrics != nil {
		for _, c := range []prometheus.Collector{l.added, l.syncErr} {
			if err := o.Metrics.Register(c); err != nil {
				return nil, fmt.Errorf("revoke: registering metrics: %w", err)
			}
		}
	}
	return l, nil
}

// Revoked reports whether c was revoked: its (tenant, jti) is listed, or
// it was issued before its tenant's "not before" time. Lock-free.
func (l *List) Revoked(c *token.Claims) bool {
	s := l.snap.Load()
	if len(s.ids) > 0 {
		if ts, ok := s.ids[c.ID]; ok && slices.Contains(ts, c.Tenant) {
			return true
		}
	}
	if len(s.tenants) > 0 {
		if nb, ok := s.tenants[c.Tenant]; ok && c.IssuedAt.Before(nb) {
			return true
		}
	}
	return false
}

func key(r *spool.Revocation) string {
	if r.Kind == spool.RevokeTenant {
		return "t:" + r.Tenant
	}
	return "j:" + r.Tenant + ":" + r.ID
}

// merge adds rs to the entries (union for ids, maximum for tenant times)
// and returns those that changed something. Called with mu held; the
// caller publishes the snapshot.
func (l *List) merge(rs []spool.Revocation, now time.Time) []spool.Revocation {
	var changed []spool.Revocation
	for _, r := range rs {
		switch r.Kind {
		case spool.RevokeID:
			if r.ID == "" || !now.Before(r.Expires) {
				continue
			}
		case spool.RevokeTenant:
			if r.Before.IsZero() {
				continue
			}
		default:
			continue
		}
		k := key(&r)
		old, ok := l.entries[k]
		if ok && (r.Kind == spool.RevokeID || !r.Before.After(old.Before)) {
			continue
		}
		l.entries[k] = r
		changed = append(changed, r)
	}
	return changed
}

// publishChanged stores a copy of the snapshot with changed applied
// (a map copy instead of a rebuild from the entries). Called with mu
// held.
func (l *List) publishChanged(changed []spool.Revocation) {
	if len(changed) == 0 {
		return
	}
	old := l.snap.Load()
	s := &snapshot{ids: old.ids, tenants: old.tenants}
	var idsCopied, tenantsCopied bool
	for _, r := range changed {
		if r.Kind == spool.RevokeID {
			if !idsCopied {
				s.ids = make(map[string][]string, len(old.ids)+len(changed))
				maps.Copy(s.ids, old.ids)
				idsCopied = true
			}
			// A new slice: the old snapshot's may be read concurrently.
			s.ids[r.ID] = append(slices.Clip(s.ids[r.ID]), r.Tenant)
		} else {
			if !tenantsCopied {
				s.tenants = make(map[string]time.Time, len(old.tenants)+1)
				maps.Copy(s.tenants, old.tenants)
				tenantsCopied = true
			}
			s.tenants[r.Tenant] = r.Before
		}
	}
	l.snap.Store(s)
}

// publish rebuilds the snapshot from the entries. Called with mu held.
func (l *List) publish() {
	s := &snapshot{ids: map[string][]string{}, tenants: map[string]time.Time{}}
	for _, r := range l.entries {
		if r.Kind == spool.RevokeID {
			s.ids[r.ID] = append(s.ids[r.ID], r.Tenant)
		} else {
			s.tenants[r.Tenant] = r.Before
		}
	}
	l.snap.Store(s)
}

// Load reads the spool's revocations into the list (call it before the
// listeners accept). Expired id entries are skipped.
func (l *List) Load() (int, error) {
	if l.o.Spool == nil {
		return 0, nil
	}
	rs, err := l.o.Spool.Revocations()
	if err != nil {
		return 0, fmt.Errorf("revoke: reading the spool: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(l.merge(rs, l.now()))
	l.publish()
	return n, nil
}

// RevokeID revokes tenant's token id (its jti), records a token_revoked
// event and announces it. It returns the entry. An error means nothing
// was revoked (the spool could not store it); a Redis failure is not an
// error: the revocation applies here and reaches the other nodes once
// Redis answers (see the package doc).
func (l *List) RevokeID(ctx context.Context, tenant, id, source string) (spool.Revocation, error) {
	if tenant == "" || id == "" || strings.ContainsAny(id, ":\x00") || strings.IndexByte(tenant, 0) >= 0 {
		return spool.Revocation{}, errors.New("revoke: a tenant and a token id without ':' are required")
	}
	now := l.now().UTC()
	r := spool.Revocation{Kind: spool.RevokeID, Tenant: tenant, ID: id, Expires: now.Add(l.keep), Source: source, Created: now}
	ev := &pipeline.Event{Type: pipeline.EventTokenRevoked, Tenant: tenant, Source: source,
		Metadata: map[string]string{"token_id": id, "expires": r.Expires.Format(time.RFC3339)}}
	return l.revoke(ctx, r, ev)
}

// RevokeTenant refuses every token of tenant issued before before (zero:
// now), records a token_revoked event and announces it. before is
// rounded up to the next whole second (token times have whole seconds),
// so a token minted in the same second is refused too; a time in the
// future (beyond the clock skew token.DefaultLeeway) is ErrFuture. An
// earlier time than the tenant's current one changes nothing but is not
// an error. Errors and Redis as for RevokeID.
func (l *List) RevokeTenant(ctx context.Context, tenant string, before time.Time, source string) (spool.Revocation, error) {
	if tenant == "" || strings.IndexByte(tenant, 0) >= 0 {
		return spool.Revocation{}, errors.New("revoke: a tenant is required")
	}
	now := l.now().UTC()
	if before.IsZero() {
		before = now
	}
	if before.After(now.Add(token.DefaultLeeway)) {
		return spool.Revocation{}, ErrFuture
	}
	if t := before.UTC().Truncate(time.Second); t.Before(before) {
		before = t.Add(time.Second)
	} else {
		before = t
	}
	r := spool.Revocation{Kind: spool.RevokeTenant, Tenant: tenant, Before: before, Source: source, Created: now}
	ev := &pipeline.Event{Type: pipeline.EventTokenRevoked, Tenant: tenant, Source: source,
		Metadata: map[string]string{"before": before.Format(time.RFC3339)}}
	return l.revoke(ctx, r, ev)
}

// revoke stores, applies and shares r, and returns the entry in force
// (for a tenant, the later of r and the tenant's current time).
func (l *List) revoke(ctx context.Context, r spool.Revocation, ev *pipeline.Event) (spool.Revocation, error) {
	l.mu.Lock()
	if _, seen := l.entries[key(&r)]; r.Kind == spool.RevokeID && !seen && len(l.entries) >= l.maxIDs {
		l.mu.Unlock()
		return spool.Revocation{}, ErrTooMany
	}
	if old, ok := l.entries[key(&r)]; ok && r.Kind == spool.RevokeTenant && !r.Before.After(old.Before) {
		// The spool keeps the entry in force; the event records the request.
		r.Before = old.Before
	}
	if l.o.Spool != nil {
		if err := l.o.Spool.PutRevocations([]spool.Revocation{r}, ev); err != nil {
			l.mu.Unlock()
			return spool.Revocation{}, fmt.Errorf("revoke: storing in the spool: %w", err)
		}
	}
	l.publishChanged(l.merge([]spool.Revocation{r}, l.now()))
	l.pending[key(&r)] = r
	l.mu.Unlock()
	l.added.WithLabelValues(r.Kind, "local").Inc()
	l.log.Info("token revoked", append(describe(r), "source", r.Source)...)
	if l.o.Redis != nil {
		if err := l.share(ctx, []spool.Revocation{r}); err != nil {
			l.syncErr.Inc()
			l.log.Warn("revocation applied on this node; Redis did not take it, the other nodes learn it when Redis answers again",
				append(describe(r), "err", err)...)
			return r, nil
		}
	}
	l.mu.Lock()
	delete(l.pending, key(&r))
	l.mu.Unlock()
	return r, nil
}

// ---- Redis ----

func (l *List) rkey(s string) string { return l.o.Redis.Prefix + s }

// tenantMax sets a tenant's time only if it raises it.
var tenantMax = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur or tonumber(cur) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0`)

// write stores rs in Redis (one pipeline).
func (l *List) write(ctx context.Context, rs []spool.Revocation) error {
	if len(rs) == 0 {
		return nil
	}
	c := l.o.Redis.Client
	_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, r := range rs {
			if r.Kind == spool.RevokeID {
				p.ZAddGT(ctx, l.rkey("revoked:ids"), redis.Z{Score: float64(r.Expires.UnixMilli()), Member: r.Tenant + ":" + r.ID})
			} else {
				tenantMax.Eval(ctx, p, []string{l.rkey("revoked:tenants")}, r.Tenant, r.Before.UnixMilli())
			}
		}
		return nil
	})
	return err
}

// share writes rs to Redis and announces each on the channel.
func (l *List) share(ctx context.Context, rs []spool.Revocation) error {
	ctx, cancel := l.timeout(ctx)
	defer cancel()
	if err := l.write(ctx, rs); err != nil {
		return err
	}
	_, err := l.o.Redis.Client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, r := range rs {
			b, _ := json.Marshal(r)
			p.Publish(ctx, l.rkey("revoked"), b)
		}
		return nil
	})
	return err
}

func (l *List) timeout(ctx context.Context) (context.Context, context.CancelFunc) {
	t := l.o.Redis.Timeout
	if t <= 0 {
		t = 3 * time.Second
	}
	return context.WithTimeout(ctx, 2*t)
}

// Sync resynchronises with Redis once: it writes this node's whole set,
// announces what was pending, then reads Redis's set and merges it. A
// no-op without Redis.
func (l *List) Sync(ctx context.Context) error {
	if l.o.Redis == nil {
		return nil
	}
	ctx, cancel := l.timeout(ctx)
	defer cancel()
	l.mu.Lock()
	all := make([]spool.Revocation, 0, len(l.entries))
	for _, r := range l.entries {
		all = append(all, r)
	}
	pending := slicesOf(l.pending)
	l.mu.Unlock()
	if err := l.write(ctx, all); err != nil {
		return fmt.Errorf("revoke: writing to Redis: %w", err)
	}
	if len(pending) > 0 {
		if err := l.share(ctx, pending); err != nil {
			return fmt.Errorf("revoke: announcing: %w", err)
		}
		l.mu.Lock()
		for _, r := range pending {
			if p, ok := l.pending[key(&r)]; ok && p == r {
				delete(l.pending, key(&r))
			}
		}
		l.mu.Unlock()
	}
	now := l.now()
	c := l.o.Redis.Client
	var ids *redis.ZSliceCmd
	var tenants *redis.MapStringStringCmd
	_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRemRangeByScore(ctx, l.rkey("revoked:ids"), "-inf", strconv.FormatInt(now.UnixMilli(), 10))
		ids = p.ZRangeWithScores(ctx, l.rkey("revoked:ids"), 0, -1)
		tenants = p.HGetAll(ctx, l.rkey("revoked:tenants"))
		return nil
	})
	if err != nil {
		return fmt.Errorf("revoke: reading from Redis: %w", err)
	}
	var rs []spool.Revocation
	for _, z := range ids.Val() {
		m, _ := z.Member.(string)
		i := strings.LastIndexByte(m, ':')
		if i <= 0 || i == len(m)-1 {
			continue
		}
		rs = append(rs, spool.Revocation{Kind: spool.RevokeID, Tenant: m[:i], ID: m[i+1:],
			Expires: time.UnixMilli(int64(z.Score)).UTC(), Source: "redis", Created: now.UTC()})
	}
	for t, v := range tenants.Val() {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			continue
		}
		rs = append(rs, spool.Revocation{Kind: spool.RevokeTenant, Tenant: t, Before: time.UnixMilli(ms).UTC(),
			Source: "redis", Created: now.UTC()})
	}
	return l.learn(rs)
}

func slicesOf(m map[string]spool.Revocation) []spool.Revocation {
	out := make([]spool.Revocation, 0, len(m))
	for _, r := range m {
		out = append(out, r)
	}
	return out
}

// learn merges revocations from other nodes and stores the new ones in
// the spool (no event: the revoking node recorded it).
func (l *List) learn(rs []spool.Revocation) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	changed := l.merge(rs, l.now())
	if len(changed) == 0 {
		return nil
	}
	var err error
	if l.o.Spool != nil {
		// Stored first, so what a node refuses survives its restart;
		// on a failure it still applies in memory (a restart before
		// the next resync would forget it until then).
		if err = l.o.Spool.PutRevocations(changed, nil); err != nil {
			err = fmt.Errorf("revoke: storing in the spool: %w", err)
		}
	}
	l.publishChanged(changed)
	for _, r := range changed {
		l.added.WithLabelValues(r.Kind, "remote").Inc()
		l.log.Info("token revocation learned from another node", describe(r)...)
	}
	return err
}

// prune drops expired id entries from memory and the spool.
func (l *List) prune() {
	now := l.now()
	l.mu.Lock()
	n := len(l.entries)
	maps.DeleteFunc(l.entries, func(_ string, r spool.Revocation) bool {
		return r.Kind == spool.RevokeID && !now.Before(r.Expires)
	})
	if len(l.entries) != n {
		l.publish()
	}
	l.mu.Unlock()
	if l.o.Spool != nil {
		if _, err := l.o.Spool.PruneRevocations(now); err != nil && l.allow("prune") {
			l.log.Warn("cannot prune expired token revocations from the spool", "err", err)
		}
	}
}

// Start synchronises with Redis once (bounded by the Redis timeout; a
// failure is logged, the node starts with what its spool had), then runs
// the subscription, the periodic resynchronisation and the pruning in
// the background until Stop.
func (l *List) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	l.stop, l.done = cancel, make(chan struct{})
	if l.o.Redis != nil {
		if err := l.Sync(ctx); err != nil {
			l.syncErr.Inc()
			l.log.Warn("cannot read token revocations from Redis at start; using the spool's, retrying in the background", "err", err)
		}
	}
	var wg sync.WaitGroup
	if l.o.Redis != nil {
		l.ps = l.o.Redis.Client.Subscribe(ctx, l.rkey("revoked"))
		wg.Add(1)
		go func() { defer wg.Done(); l.subscribe(ctx, l.ps) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); l.loop(ctx) }()
	go func() { wg.Wait(); close(l.done) }()
}

// Stop ends what Start started and waits for it.
func (l *List) Stop() {
	if l != nil && l.stop != nil {
		l.stop()
		if l.ps != nil {
			_ = l.ps.Close() // unblocks its Receive
		}
		<-l.done
	}
}

// loop prunes and (with Redis) resynchronises every Resync, and when
// kicked (a (re)established subscription).
func (l *List) loop(ctx context.Context) {
	every := l.o.Resync
	if l.o.Redis == nil {
		every = time.Minute // pruning only
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.prune()
		case <-l.kick:
		}
		if err := l.Sync(ctx); err != nil && ctx.Err() == nil {
			l.syncErr.Inc()
			if l.allow("sync") {
				l.log.Warn("cannot resynchronise token revocations with Redis; retrying", "every", every, "err", err)
			}
		}
	}
}

// subscribe receives the announcements of the other nodes. go-redis
// reconnects and resubscribes by itself; each (re)subscription kicks a
// full resync, since announcements sent meanwhile are lost.
func (l *List) subscribe(ctx context.Context, ps *redis.PubSub) {
	backoff := 100 * time.Millisecond
	for {
		msg, err := ps.ReceiveTimeout(ctx, 30*time.Second)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() {
				_ = ps.Ping(ctx) // a dead connection fails here and is replaced
				continue
			}
			if l.allow("subscribe") {
				l.log.Warn("token revocation channel: Redis unreachable; retrying", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				l.subscriptions.Add(1)
				select {
				case l.kick <- struct{}{}:
				default:
				}
			}
		case *redis.Message:
			var r spool.Revocation
			if err := json.Unmarshal([]byte(m.Payload), &r); err != nil {
				if l.allow("bad message") {
					l.log.Warn("token revocation channel: ignoring a malformed message", "err", err)
				}
				continue
			}
			r.Source = "redis"
			if err := l.learn([]spool.Revocation{r}); err != nil {
				l.log.Warn("token revocation from another node applied in memory only", "err", err)
			}
		}
	}
}

// allow rate-limits a repeating log line (one a minute per kind).
func (l *List) allow(kind string) bool {
	ok, _ := l.sample.Allow(kind)
	return ok
}

// describe is r as log attributes.
func describe(r spool.Revocation) []any {
	if r.Kind == spool.RevokeID {
		return []any{"kind", r.Kind, "tenant", r.Tenant, "jti", r.ID}
	}
	return []any{"kind", r.Kind, "tenant", r.Tenant, "before", r.Before}
}
