package revoke

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/internal/token"
	"github.com/sluice-mta/sluice/pipeline"
)

func claims(tenant, id string, iat time.Time) *token.Claims {
	return &token.Claims{ID: id, Tenant: tenant, IssuedAt: iat, NotBefore: iat, Expires: iat.Add(10 * time.Minute)}
}

func openSpool(t *testing.T, dir string) *spool.Spool {
	t.Helper()
	sp, err := spool.Open(dir, spool.Options{Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

func newList(t *testing.T, o Options) *List {
	t.Helper()
	l, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Load(); err != nil {
		t.Fatal(err)
	}
	l.Start()
	t.Cleanup(l.Stop)
	return l
}

func TestRevokeByIDAndTenant(t *testing.T) {
	ctx := context.Background()
	l := newList(t, Options{})
	now := time.Now().UTC().Truncate(time.Second)
	a1 := claims("acme", "tok1", now.Add(-time.Minute))
	if l.Revoked(a1) {
		t.Fatal("revoked before any revocation")
	}
	r, err := l.RevokeID(ctx, "acme", "tok1", SourceAPI)
	if err != nil {
		t.Fatal(err)
	}
	if !l.Revoked(a1) {
		t.Fatal("tok1 of acme not revoked")
	}
	if want := token.DefaultLifetime + token.DefaultLeeway; r.Expires.Sub(r.Created) != want {
		t.Fatalf("entry kept %s, want max_lifetime + leeway %s", r.Expires.Sub(r.Created), want)
	}
	// Tenant-scoped: the same id under another tenant is not revoked.
	if l.Revoked(claims("other", "tok1", now)) {
		t.Fatal("a revocation by acme revoked another tenant's token")
	}
	if _, err := l.RevokeID(ctx, "other", "tok1", SourceAPI); err != nil {
		t.Fatal(err)
	}
	if !l.Revoked(claims("other", "tok1", now)) || !l.Revoked(a1) || l.Revoked(claims("third", "tok1", now)) {
		t.Fatal("one id revoked for two tenants")
	}
	for _, bad := range [][2]string{{"", "x"}, {"acme", ""}, {"acme", "a:b"}} {
		if _, err := l.RevokeID(ctx, bad[0], bad[1], SourceAPI); err == nil {
			t.Errorf("RevokeID(%q, %q) accepted", bad[0], bad[1])
		}
	}

	// Tenant not-before: tokens issued earlier are refused, later ones not.
	old := claims("beta", "t-old", now.Add(-2*time.Minute))
	if _, err := l.RevokeTenant(ctx, "beta", now.Add(-time.Minute), SourceCLI); err != nil {
		t.Fatal(err)
	}
	if !l.Revoked(old) || l.Revoked(claims("beta", "t-new", now)) {
		t.Fatalf("not-before: old revoked %v, new revoked %v", l.Revoked(old), l.Revoked(claims("beta", "t-new", now)))
	}
	// An earlier time does not lower it, and the answer is the time in force.
	rv, err := l.RevokeTenant(ctx, "beta", now.Add(-time.Hour), SourceAPI)
	if err != nil {
		t.Fatal(err)
	}
	if !l.Revoked(old) || !rv.Before.Equal(now.Add(-time.Minute)) {
		t.Fatalf("an earlier not-before lowered the tenant's time (answer %s)", rv.Before)
	}
	// Rounded up to the second: a token minted in the same second is refused.
	rv, err = l.RevokeTenant(ctx, "gamma", now.Add(300*time.Millisecond), SourceAPI)
	if err != nil {
		t.Fatal(err)
	}
	if !rv.Before.Equal(now.Add(time.Second)) || !l.Revoked(claims("gamma", "g", now)) {
		t.Fatalf("before %s, want %s", rv.Before, now.Add(time.Second))
	}
	if _, err := l.RevokeTenant(ctx, "gamma", time.Now().Add(time.Hour), SourceAPI); !errors.Is(err, ErrFuture) {
		t.Fatalf("future time: %v", err)
	}
}

// The verifier consults the list on every call, also for a token whose
// claims it cached.
func TestVerifierCacheDoesNotBypass(t *testing.T) {
	l := newList(t, Options{})
	k := token.GenerateKey()
	tok, c, err := token.NewIssuer(k, 0).Issue(token.IssueOptions{Tenant: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	v, err := token.NewVerifier([]*token.PublicKey{k.Public()}, 0, l)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(tok); err != nil {
		t.Fatal(err)
	}
	if _, err := l.RevokeID(context.Background(), "acme", c.ID, SourceAPI); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(tok); !errors.Is(err, token.ErrRevoked) {
		t.Fatalf("cached token after revocation: %v", err)
	}
	if err := v.Check(c); !errors.Is(err, token.ErrRevoked) {
		t.Fatalf("Check: %v", err)
	}
}

// Revocations survive a restart through the spool, and each local one
// records a token_revoked event valid against the published schema.
func TestPersistedInSpool(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	sp := openSpool(t, dir)
	l, _ := New(Options{Spool: sp})
	if _, err := l.RevokeID(ctx, "acme", "tok1", SourceCLI); err != nil {
		t.Fatal(err)
	}
	if _, err := l.RevokeTenant(ctx, "beta", time.Time{}, SourceAPI); err != nil {
		t.Fatal(err)
	}
	// An earlier time later on must not weaken what the spool keeps.
	if _, err := l.RevokeTenant(ctx, "beta", time.Now().Add(-time.Hour), SourceAPI); err != nil {
		t.Fatal(err)
	}
	evs, err := sp.ReadOutbox(0, 10)
	if err != nil || len(evs) != 3 {
		t.Fatalf("outbox: %d events, %v", len(evs), err)
	}
	for _, ev := range evs {
		if ev.Type != pipeline.EventTokenRevoked {
			t.Fatalf("event type %q", ev.Type)
		}
		testutil.ValidateEvent(t, ev.JSON)
	}
	if !strings.Contains(string(evs[0].JSON), `"token_id":"tok1"`) || !strings.Contains(string(evs[0].JSON), `"source":"cli"`) ||
		!strings.Contains(string(evs[1].JSON), `"before":`) {
		t.Fatalf("events: %s / %s", evs[0].JSON, evs[1].JSON)
	}
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}

	sp = openSpool(t, dir)
	defer sp.Close()
	l2, _ := New(Options{Spool: sp})
	if n, err := l2.Load(); err != nil || n != 2 {
		t.Fatalf("Load: %d, %v", n, err)
	}
	if !l2.Revoked(claims("acme", "tok1", time.Now())) || !l2.Revoked(claims("beta", "x", time.Now().Add(-time.Minute))) {
		t.Fatal("revocations lost by the restart")
	}

	// Expired id entries are pruned from memory and the spool; tenant
	// times stay.
	l2.now = func() time.Time { return time.Now().Add(token.DefaultLifetime + time.Minute) }
	l2.prune()
	if l2.Revoked(claims("acme", "tok1", time.Now())) {
		t.Fatal("expired id entry not pruned")
	}
	rs, err := sp.Revocations()
	if err != nil || len(rs) != 1 || rs[0].Kind != spool.RevokeTenant {
		t.Fatalf("spool after prune: %+v, %v", rs, err)
	}
}

func redisClient(t *testing.T, addr string) *pipeline.Redis {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, Protocol: 2, DisableIdentity: true,
		DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second})
	t.Cleanup(func() { c.Close() })
	return &pipeline.Redis{Client: c, Prefix: "sluice:test:", Timeout: time.Second}
}

// Two nodes on one real redis-server: a revocation on one reaches the
// other (pub/sub), and is stored in the other's spool.
func TestSharedThroughRedis(t *testing.T) {
	ctx := context.Background()
	rd := testutil.StartRedis(t)
	spB := openSpool(t, t.TempDir())
	defer spB.Close()
	a := newList(t, Options{Redis: redisClient(t, rd.Addr), Resync: time.Hour})
	reg := prometheus.NewRegistry()
	b := newList(t, Options{Redis: redisClient(t, rd.Addr), Spool: spB, Resync: time.Hour, Metrics: reg})
	// Resync is an hour: what b learns here came through the channel.
	testutil.WaitFor(t, "b subscribed", func() bool { return b.subscriptions.Load() > 0 })
	if _, err := a.RevokeID(ctx, "acme", "tok1", SourceAPI); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "b refuses acme's tok1", func() bool { return b.Revoked(claims("acme", "tok1", time.Now())) })
	now := time.Now()
	if _, err := a.RevokeTenant(ctx, "beta", time.Time{}, SourceAPI); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "b refuses beta's older tokens", func() bool { return b.Revoked(claims("beta", "x", now.Add(-time.Second))) })
	rs, err := spB.Revocations()
	if err != nil || len(rs) != 2 {
		t.Fatalf("b's spool: %+v, %v", rs, err)
	}
	if n := promtest.ToFloat64(b.added.WithLabelValues("id", "remote")) + promtest.ToFloat64(b.added.WithLabelValues("tenant", "remote")); n != 2 {
		t.Fatalf("sluice_token_revocations_total{origin=remote} on b: %v", n)
	}
	if mfs, err := reg.Gather(); err != nil || len(mfs) != 2 {
		t.Fatalf("b's metrics: %d families, %v", len(mfs), err)
	}
	if s := rd.Do("ZSCORE", "sluice:test:revoked:ids", "acme:tok1"); s == "$-1" {
		t.Fatal("no id entry in Redis")
	}
	if s := rd.Do("HEXISTS", "sluice:test:revoked:tenants", "beta"); s != ":1" {
		t.Fatalf("tenant entry in Redis: %s", s)
	}
	// A node started later reads the whole set at Start.
	c := newList(t, Options{Redis: redisClient(t, rd.Addr), Resync: time.Hour})
	if !c.Revoked(claims("acme", "tok1", time.Now())) || !c.Revoked(claims("beta", "x", now.Add(-time.Second))) {
		t.Fatal("a new node did not read the set at start")
	}
}

// Redis down: a revocation applies locally at once; when Redis is back,
// the other node learns it (the revoking node writes and announces it
// at its resync). A Redis that lost its data is refilled by the nodes.
func TestRedisDown(t *testing.T) {
	ctx := context.Background()
	rd := testutil.StartRedis(t)
	a := newList(t, Options{Redis: redisClient(t, rd.Addr), Resync: 300 * time.Millisecond})
	b := newList(t, Options{Redis: redisClient(t, rd.Addr), Resync: 300 * time.Millisecond})
	rd.Stop()
	if _, err := a.RevokeID(ctx, "acme", "down1", SourceAPI); err != nil {
		t.Fatalf("revocation with Redis down: %v", err)
	}
	if !a.Revoked(claims("acme", "down1", time.Now())) {
		t.Fatal("not applied locally while Redis is down")
	}
	if b.Revoked(claims("acme", "down1", time.Now())) {
		t.Fatal("b learned it without Redis")
	}
	rd.Start()
	testutil.WaitFor(t, "b learns the revocation made while Redis was down", func() bool {
		return b.Revoked(claims("acme", "down1", time.Now()))
	})
	// Redis loses everything (a restart without persistence): the
	// nodes write their sets back, so a new node still learns them.
	rd.Do("FLUSHALL")
	testutil.WaitFor(t, "the nodes refill Redis", func() bool {
		return rd.Do("ZSCORE", "sluice:test:revoked:ids", "acme:down1") != "$-1"
	})
	c := newList(t, Options{Redis: redisClient(t, rd.Addr), Resync: time.Hour})
	if !c.Revoked(claims("acme", "down1", time.Now())) {
		t.Fatal("a new node did not learn it after Redis lost its data")
	}
}

// BenchmarkRevoked is the check every verification pays: a token that is
// not revoked, against 10,000 revoked ids and 100 tenant times (one of
// them the token's tenant).
func BenchmarkRevoked(b *testing.B) {
	l, _ := New(Options{Logger: slog.New(slog.DiscardHandler)})
	l.mu.Lock()
	var rs []spool.Revocation
	now := time.Now()
	for i := range 10000 {
		rs = append(rs, spool.Revocation{Kind: spool.RevokeID, Tenant: fmt.Sprintf("t%d", i%100), ID: fmt.Sprintf("id%d", i), Expires: now.Add(time.Hour)})
	}
	for i := range 100 {
		rs = append(rs, spool.Revocation{Kind: spool.RevokeTenant, Tenant: fmt.Sprintf("t%d", i), Before: now.Add(-time.Hour)})
	}
	l.merge(rs, now)
	l.publish()
	l.mu.Unlock()
	c := claims("t7", "nnsd3TN6tcKo_dTI8jW76w", now)
	b.ReportAllocs()
	for b.Loop() {
		if l.Revoked(c) {
			b.Fatal("revoked")
		}
	}
}

// TestRevokeIDBounded: past the bound on held ids, RevokeID refuses with
// ErrTooMany (nothing stored); an id already held and a tenant time are
// still accepted.
func TestRevokeIDBounded(t *testing.T) {
	ctx := context.Background()
	l := newList(t, Options{})
	l.maxIDs = 3
	for _, id := range []string{"a", "b", "c"} {
		if _, err := l.RevokeID(ctx, "acme", id, SourceAPI); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.RevokeID(ctx, "acme", "d", SourceAPI); !errors.Is(err, ErrTooMany) {
		t.Fatalf("fourth id: %v, want ErrTooMany", err)
	}
	if l.Revoked(claims("acme", "d", time.Now())) {
		t.Fatal("the refused id was revoked")
	}
	if _, err := l.RevokeID(ctx, "acme", "b", SourceAPI); err != nil {
		t.Fatalf("an id already held: %v", err)
	}
	if _, err := l.RevokeTenant(ctx, "acme", time.Time{}, SourceAPI); err != nil {
		t.Fatalf("tenant revocation at the bound: %v", err)
	}
}
