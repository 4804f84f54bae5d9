package ratelimit

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	tu "github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestLeaseSize: the events a key's rate allows in 50 ms, at most the
// configured lease and a quarter of the burst, at least 1; slow keys
// (under 40 a second) and lease 1 get none.
func TestLeaseSize(t *testing.T) {
	for _, c := range []struct {
		r    pipeline.Rate
		most int
		want int64
	}{
		{pipeline.Rate{Limit: 100_000_000, Period: time.Hour}, 32, 32}, // the benchmark's
		{pipeline.Rate{Limit: 1000, Period: time.Second}, 32, 32},
		{pipeline.Rate{Limit: 1000, Period: time.Second}, 1000, 50},
		{pipeline.Rate{Limit: 1000, Period: time.Second}, 1, 1},
		{pipeline.Rate{Limit: 1000, Period: time.Second, Burst: 20}, 32, 5},
		{pipeline.Rate{Limit: 1000, Period: time.Second, Burst: 3}, 32, 1},
		{pipeline.Rate{Limit: 40, Period: time.Second}, 32, 2},
		{pipeline.Rate{Limit: 39, Period: time.Second}, 32, 1},
		{pipeline.Rate{Limit: 100, Period: time.Minute}, 32, 1},
		{pipeline.Rate{Limit: MaxLimit, Period: time.Millisecond}, 1000, 1000},
	} {
		if got := leaseSize(c.r, c.most); got != c.want {
			t.Errorf("leaseSize(%+v, %d) = %d, want %d", c.r, c.most, got, c.want)
		}
	}
}

// leaseNode is a store on rs (a node of the cluster) with its own
// client, counting its round trips and recording the scripts' ARGV after
// a warm-up, with lease (0: the default) and a node clock the test moves
// (leases expire only when it does).
func leaseNode(t *testing.T, rs *tu.Redis, lease int) *testNode {
	c := redis.NewClient(&redis.Options{Addr: rs.Addr, MaxRetries: -1, Protocol: 2, DisableIdentity: true})
	t.Cleanup(func() { c.Close() })
	h := &argsHook{}
	c.AddHook(h)
	s := NewRedis(&pipeline.Redis{Client: c, Prefix: "t:", Timeout: time.Minute, RateLease: lease})
	var now atomic.Int64
	s.now = now.Load
	if res := check1(t, s, "warm", pipeline.Rate{Limit: 1000, Period: time.Hour}, 1); !res.Allowed { // loads the script
		t.Fatalf("warm-up: %+v", res)
	}
	h.reset()
	return &testNode{Redis: s, hook: h, clock: &now}
}

// testNode is a store with its client's hook and its lease clock.
type testNode struct {
	*Redis
	hook  *argsHook
	clock *atomic.Int64
}

// argsHook counts a client's round trips and keeps the ARGV of each
// script run (EVALSHA or EVAL: the arguments after the keys).
type argsHook struct {
	mu   sync.Mutex
	n    int
	argv [][]any
}

func (*argsHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *argsHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.mu.Lock()
		h.n++
		if a := cmd.Args(); len(a) > 3 && (a[0] == "evalsha" || a[0] == "eval") {
			nk, _ := a[2].(int)
			h.argv = append(h.argv, a[3+nk:])
		}
		h.mu.Unlock()
		return next(ctx, cmd)
	}
}
func (h *argsHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.mu.Lock()
		h.n++
		h.mu.Unlock()
		return next(ctx, cmds)
	}
}

func (h *argsHook) trips() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n
}

func (h *argsHook) reset() {
	h.mu.Lock()
	h.n, h.argv = 0, nil
	h.mu.Unlock()
}

// fast is a rate whose keys get the default lease of 32 and that the
// tests never exhaust: 1000 a second, a million at once.
var fast = pipeline.Rate{Limit: 1000, Period: time.Second, Burst: 1_000_000}

// TestRedisLease: 1000 checks of a fast key on one node take
// ceil(1000/32) round trips (the first asks Redis for 32 events, the
// next 31 are spent locally), and the node holds the rest; with lease 1
// every check is a round trip asking for its cost only, as without
// leasing, and nothing is held.
func TestRedisLease(t *testing.T) {
	rs := tu.StartRedis(t)
	for _, c := range []struct {
		lease, trips int
		held         int64
		ask          int64 // the most the first script run asks for
	}{
		{lease: 0, trips: 32, held: 32*32 - 1000, ask: 32},
		{lease: 1, trips: 1000, held: 0, ask: 1},
	} {
		s := leaseNode(t, rs, c.lease)
		h := s.hook
		key := "lease" + strconv.Itoa(c.lease)
		for i := 0; i < 1000; i++ {
			if res := check1(t, s, key, fast, 1); !res.Allowed || res.Remaining < 900_000 {
				t.Fatalf("lease %d, check %d: %+v", c.lease, i+1, res)
			}
		}
		if n := h.trips(); n != c.trips {
			t.Errorf("lease %d: %d round trips for 1000 checks, want %d", c.lease, n, c.trips)
		}
		if n := s.Held(); n != c.held {
			t.Errorf("lease %d: %d events held, want %d", c.lease, n, c.held)
		}
		// ARGV: count, then e, tol, n, m per check.
		for i, a := range h.argv {
			want := c.ask
			if i > 0 && c.lease == 1 {
				want = 1
			}
			if len(a) != 5 || a[3] != int64(1) || (i == 0 && a[4] != want) || (c.lease == 1 && a[4] != int64(1)) {
				t.Fatalf("lease %d: script run %d ARGV %v, want a cost of 1 and at most %d", c.lease, i+1, a, want)
			}
		}
	}
}

// TestRedisLeaseSlowKey: a key under 40 events a second gets no lease
// (every check a round trip, nothing held), whatever ratelimit_lease.
func TestRedisLeaseSlowKey(t *testing.T) {
	rs := tu.StartRedis(t)
	s := leaseNode(t, rs, 1000)
	slow := pipeline.Rate{Limit: 30, Period: time.Second, Burst: 1000}
	for i := 0; i < 20; i++ {
		if !check1(t, s, "slow", slow, 1).Allowed {
			t.Fatalf("check %d refused", i+1)
		}
	}
	if n := s.hook.trips(); n != 20 {
		t.Errorf("%d round trips for 20 checks of a slow key, want 20", n)
	}
	if n := s.Held(); n != 0 {
		t.Errorf("%d events held for a slow key", n)
	}
}

// TestRedisLeaseExpiry: a lease unused for LeaseTTL is dropped (its
// events are lost: Redis counted them, and the metric counts them) and
// the next check asks Redis again, for half as many (the node spends the
// key slower than its leases last).
func TestRedisLeaseExpiry(t *testing.T) {
	s := countedLeaseNode(t)
	check1(t, s, "exp", fast, 1)
	if n := s.Held(); n != 31 {
		t.Fatalf("%d held after the first check, want 31", n)
	}
	s.clock.Add(int64(LeaseTTL) - 1)
	check1(t, s, "exp", fast, 1)
	if n, h := s.hook.trips(), s.Held(); n != 1 || h != 30 {
		t.Fatalf("before expiry: %d round trips, %d held; want 1 and 30", n, h)
	}
	s.clock.Add(1)
	if n := s.Held(); n != 0 {
		t.Fatalf("%d held after LeaseTTL", n)
	}
	check1(t, s, "exp", fast, 1)
	if n, h := s.hook.trips(), s.Held(); n != 2 || h != 15 {
		t.Fatalf("after expiry: %d round trips, %d held; want 2 and 15 (a new lease of 16, the old one gone)", n, h)
	}
	if l, lost := promtest.ToFloat64(s.leasedEvents), promtest.ToFloat64(s.lostEvents); l != 46 || lost != 30 {
		t.Errorf("sluice_ratelimit_lease_events_total leased %v, lost %v; want 46 and 30", l, lost)
	}
}

// TestRedisLeaseRefused: a call whose leased key has allowance but whose
// other key is over its limit is refused, and the leased event it took
// goes back.
func TestRedisLeaseRefused(t *testing.T) {
	rs := tu.StartRedis(t)
	s := leaseNode(t, rs, 0)
	one := pipeline.Rate{Limit: 1, Period: time.Hour}
	check1(t, s, "lf", fast, 1)
	check1(t, s, "full", one, 1)
	out := make([]pipeline.RateResult, 2)
	for i := 0; i < 3; i++ {
		if err := s.Check(context.Background(), []pipeline.RateCheck{{Key: "lf", Rate: fast}, {Key: "full", Rate: one}}, out); err != nil {
			t.Fatal(err)
		}
		if out[1].Allowed || out[1].RetryAfter <= 0 || !out[0].Allowed {
			t.Fatalf("refused call %d: %+v, want the fast key allowed and the full one refused", i+1, out)
		}
	}
	if n := s.Held(); n != 31 {
		t.Fatalf("%d held after 3 refused calls, want 31 (what they took went back)", n)
	}
}

// TestRedisLeaseDown: with Redis stopped, the events already leased are
// still spent, a call needing Redis fails (and gives back what it took
// from a lease), and once the lease is spent every call fails, as
// without leasing (the stage then applies on_store_error).
func TestRedisLeaseDown(t *testing.T) {
	rs := tu.StartRedis(t)
	s := leaseNode(t, rs, 0)
	check1(t, s, "down", fast, 1)
	rs.Stop()
	out := make([]pipeline.RateResult, 2)
	if err := s.Check(context.Background(), []pipeline.RateCheck{{Key: "down", Rate: fast}, {Key: "new", Rate: fast}}, out); err == nil {
		t.Fatal("a key without a lease was checked with Redis stopped")
	}
	for i := 0; i < 31; i++ {
		if err := s.Check(context.Background(), []pipeline.RateCheck{{Key: "down", Rate: fast}}, out[:1]); err != nil || !out[0].Allowed {
			t.Fatalf("leased check %d with Redis stopped: %+v %v", i+1, out[0], err)
		}
	}
	if err := s.Check(context.Background(), []pipeline.RateCheck{{Key: "down", Rate: fast}}, out[:1]); err == nil {
		t.Fatal("a check past the lease succeeded with Redis stopped")
	}
}

// TestRedisLeaseCluster: two nodes, each 20 sessions (half may run
// batches, half have a Lua hook's deadline), 5,000 checks of one fast
// key each: every check is allowed, few take a round trip, and what
// Redis charged is exactly what the nodes admitted plus what they still
// hold (nothing admitted without being charged, nothing charged lost).
// The key's emission interval is 1 ms and 10,000 events are charged, so
// its TAT stays ahead of the server's clock for the whole test and gives
// the charged count exactly.
func TestRedisLeaseCluster(t *testing.T) {
	rs := tu.StartRedis(t)
	a, b := leaseNode(t, rs, 0), leaseNode(t, rs, 0)
	ctx := context.Background()
	check1(t, a, "cl", fast, 1) // a fresh key: charged 32, so TAT = t0 + 32 ms
	tat0, err := a.r.Client.Get(ctx, "t:rl:cl").Int64()
	if err != nil {
		t.Fatal(err)
	}
	t0 := tat0 - 32*1000
	a.hook.reset()
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for _, s := range []*testNode{a, b} {
		for g := 0; g < 20; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := sessionCtx(g)
				defer cancel()
				out := make([]pipeline.RateResult, 1)
				for i := 0; i < 250; i++ {
					if err := s.Check(ctx, []pipeline.RateCheck{{Key: "cl", Rate: fast}}, out); err != nil {
						t.Error(err)
						return
					}
					if out[0].Allowed {
						admitted.Add(1)
					}
				}
			}()
		}
	}
	wg.Wait()
	if n := admitted.Load(); n != 10_000 {
		t.Fatalf("%d of 10,000 allowed", n)
	}
	tat, err := a.r.Client.Get(ctx, "t:rl:cl").Int64()
	if err != nil {
		t.Fatal(err)
	}
	tm, err := a.r.Client.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	if tat <= tm.UnixMicro() {
		t.Fatalf("the key's TAT fell behind the server's clock (the test took over 10 s): cannot count what was charged")
	}
	charged := (tat - t0) / 1000
	held := a.Held() + b.Held()
	if charged != 1+10_000+held {
		t.Errorf("Redis charged %d events; the nodes admitted %d and hold %d", charged, 1+10_000, held)
	}
	trips := a.hook.trips() + b.hook.trips()
	t.Logf("10,000 checks on 2 nodes in %d round trips; %d events held at the end", trips, held)
	if trips > 2*(5000/32+2) {
		t.Errorf("%d round trips for 10,000 checks with leases of 32", trips)
	}
	for _, s := range []*testNode{a, b} {
		s.mu.Lock()
		if s.runners != 0 || len(s.pending) != 0 {
			t.Errorf("store not idle after the calls: %d runners, %d pending", s.runners, len(s.pending))
		}
		s.mu.Unlock()
	}
}

// TestRedisLeaseLimit: two nodes on the real clock hammer one key of
// 2,000 a second with a burst of 200 (leases of 32) for 300 ms (and
// until some check was refused): together
// they never admit more than GCRA allows a fresh key in that time, burst
// + elapsed × rate, however the leases fell.
func TestRedisLeaseLimit(t *testing.T) {
	rs := tu.StartRedis(t)
	r := pipeline.Rate{Limit: 2000, Period: time.Second, Burst: 200}
	var nodes []*Redis
	for range 2 {
		s := NewRedis(&pipeline.Redis{Client: redis.NewClient(&redis.Options{Addr: rs.Addr, MaxRetries: -1, Protocol: 2}), Prefix: "t:", Timeout: time.Minute})
		t.Cleanup(func() { s.r.Client.Close() })
		nodes = append(nodes, s)
	}
	var admitted, refused atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for _, s := range nodes {
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out := make([]pipeline.RateResult, 1)
				// 300 ms, and on until the limit was reached (a stalled
				// machine may need longer; 30 s at most).
				for d := time.Since(start); (d < 300*time.Millisecond || refused.Load() == 0) && d < 30*time.Second; d = time.Since(start) {
					if err := s.Check(context.Background(), []pipeline.RateCheck{{Key: "lim", Rate: r}}, out); err != nil {
						t.Error(err)
						return
					}
					if out[0].Allowed {
						admitted.Add(1)
					} else {
						refused.Add(1)
					}
				}
			}()
		}
	}
	wg.Wait()
	elapsed := time.Since(start)
	bound := int64(200) + int64(elapsed.Seconds()*2000) + 1
	t.Logf("%d admitted, %d refused in %v (bound %d); %d held at the end", admitted.Load(), refused.Load(), elapsed, bound, nodes[0].Held()+nodes[1].Held())
	if n := admitted.Load(); n > bound {
		t.Fatalf("%d admitted in %v: over burst + rate × time (%d)", n, elapsed, bound)
	}
	if refused.Load() == 0 {
		t.Fatal("nothing refused: the test did not reach the limit")
	}
}
