package ratelimit

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	tu "github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestRedisBatchCalls: the calls of one batch run as one script, in
// order, each all or nothing: a refused call charges none of its keys, a
// later call sees what an earlier one charged (also of a key they
// share), and each call gets its own results.
func TestRedisBatchCalls(t *testing.T) {
	s, _, cmds := redisStore(t)
	ctx := context.Background()
	two := pipeline.Rate{Limit: 2, Period: time.Hour}
	one := pipeline.Rate{Limit: 1, Period: time.Hour}
	check1(t, s, "full", one, 1) // exhausted
	cmds.Store(0)
	calls := []*call{
		s.newCall(ctx, []pipeline.RateCheck{{Key: "x", Rate: two}, {Key: "full", Rate: one}}), // refused: x not charged
		s.newCall(ctx, []pipeline.RateCheck{{Key: "x", Rate: two}}),                           // 1 left
		s.newCall(ctx, []pipeline.RateCheck{{Key: "y", Rate: one}, {Key: "x", Rate: two}}),    // 0 left
		s.newCall(ctx, []pipeline.RateCheck{{Key: "x", Rate: two}}),                           // refused
		s.newCall(ctx, []pipeline.RateCheck{{Key: "y", Rate: one, N: 2}}),                     // never fits
	}
	s.exec(ctx, calls)
	if n := cmds.Load(); n != 1 {
		t.Errorf("5 calls took %d round trips, want 1", n)
	}
	want := [][]pipeline.RateResult{
		{{Allowed: true, Remaining: 1}, {}},
		{{Allowed: true, Remaining: 1}},
		{{Allowed: true, Remaining: 0}, {Allowed: true, Remaining: 0}},
		{{}},
		{{RetryAfter: -1}},
	}
	for i, c := range calls {
		if c.err != nil {
			t.Fatalf("call %d: %v", i, c.err)
		}
		out := make([]pipeline.RateResult, len(c.keys))
		results(c.res, out)
		for j := range out {
			w := want[i][j]
			if out[j].Allowed != w.Allowed || out[j].Remaining != w.Remaining || (w.RetryAfter == -1) != (out[j].RetryAfter == -1) {
				t.Errorf("call %d check %d: %+v, want %+v", i, j, out[j], w)
			}
			if !out[j].Allowed && w.RetryAfter != -1 && out[j].RetryAfter <= 0 {
				t.Errorf("call %d check %d: refused without a retry-after: %+v", i, j, out[j])
			}
		}
	}
	// x was charged twice (calls 1 and 2), y once: the store agrees.
	if res := check1(t, s, "x", two, 1); res.Allowed {
		t.Fatalf("x after the batch: %+v, want refused", res)
	}
	if res := check1(t, s, "y", one, 1); res.Allowed {
		t.Fatalf("y after the batch: %+v, want refused", res)
	}
}

// TestRedisBatchError: a batch that fails (Redis stopped) gives every
// call the error, and none a result.
func TestRedisBatchError(t *testing.T) {
	s, rs, _ := redisStore(t)
	ctx := context.Background()
	r := pipeline.Rate{Limit: 2, Period: time.Hour}
	check1(t, s, "warm", r, 1)
	rs.Stop()
	calls := []*call{s.newCall(ctx, []pipeline.RateCheck{{Key: "a", Rate: r}}), s.newCall(ctx, []pipeline.RateCheck{{Key: "b", Rate: r}})}
	s.exec(ctx, calls)
	for i, c := range calls {
		if c.err == nil || c.res != nil {
			t.Errorf("call %d: res %v err %v, want an error", i, c.res, c.err)
		}
	}
}

// TestRedisConcurrentMixed: callers that may run batches themselves (no
// deadline) and callers that may not (a deadline before the store's
// timeout, as a Lua hook's) share one key limited to 100 per hour: 100
// are allowed in all, every caller gets an answer, and the calls took
// fewer round trips than calls, in batches of at most maxBatchKeys keys.
func TestRedisConcurrentMixed(t *testing.T) {
	rs := tu.StartRedis(t)
	c := redis.NewClient(&redis.Options{Addr: rs.Addr, MaxRetries: -1, Protocol: 2, DisableIdentity: true})
	t.Cleanup(func() { c.Close() })
	var cmds atomic.Int64
	c.AddHook(countHook{&cmds})
	s := NewRedis(&pipeline.Redis{Client: c, Prefix: "t:", Timeout: time.Minute})
	r := pipeline.Rate{Limit: 100, Period: time.Hour}
	check1(t, s, "warm", r, 1) // loads the script
	cmds.Store(0)
	const goroutines, each = 40, 10
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			if g%2 == 1 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, 50*time.Second) // before the store's minute
				defer cancel()
			}
			out := make([]pipeline.RateResult, 2)
			for i := 0; i < each; i++ {
				checks := []pipeline.RateCheck{{Key: "mixed", Rate: r}, {Key: "own" + strconv.Itoa(g), Rate: r}}
				if err := s.Check(ctx, checks, out); err != nil {
					t.Error(err)
					return
				}
				if out[0].Allowed && out[1].Allowed {
					allowed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if n := allowed.Load(); n != 100 {
		t.Fatalf("%d allowed, want exactly 100", n)
	}
	if n := cmds.Load(); n >= goroutines*each {
		t.Fatalf("%d round trips for %d calls", n, goroutines*each)
	}
	t.Logf("%d calls in %d round trips", goroutines*each, cmds.Load())
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.runners != 0 || len(s.pending) != 0 {
		t.Fatalf("store not idle after the calls: %d runners, %d pending", s.runners, len(s.pending))
	}
}

// TestRedisTake: a batch takes the pending calls in order up to
// maxBatchKeys keys, and at least one call whatever its size.
func TestRedisTake(t *testing.T) {
	s := NewRedis(&pipeline.Redis{})
	mk := func(n int) *call { return &call{keys: make([]string, n)} }
	big, a, b, c := mk(maxBatchKeys+1), mk(maxBatchKeys-10), mk(10), mk(1)
	s.pending = []*call{big, a, b, c}
	if got := s.take(nil, 0); len(got) != 1 || got[0] != big {
		t.Fatalf("first batch: %d calls, want the oversized call alone", len(got))
	}
	if got := s.take(nil, 0); len(got) != 2 || got[0] != a || got[1] != b {
		t.Fatalf("second batch: %d calls, want a and b", len(got))
	}
	if got := s.take([]*call{mk(1)}, 1); len(got) != 2 || got[1] != c {
		t.Fatalf("third batch: %d calls, want the leader's and c", len(got))
	}
	if len(s.pending) != 0 {
		t.Fatalf("%d left pending", len(s.pending))
	}
}

// TestRedisNoChecks: a call without checks answers at once, without a
// round trip (MGET of no keys would be an error).
func TestRedisNoChecks(t *testing.T) {
	s, _, cmds := redisStore(t)
	cmds.Store(0)
	if err := s.Check(context.Background(), nil, nil); err != nil {
		t.Fatal(err)
	}
	if n := cmds.Load(); n != 0 {
		t.Fatalf("%d round trips for no checks", n)
	}
}
