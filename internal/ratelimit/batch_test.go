package ratelimit

import (
	"context"
	"testing"
	"time"

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
		out := make([]pipeline.RateResult, len(c.items))
		c.results(out)
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

// TestRedisTake: a batch takes the pending calls in order up to
// maxBatchKeys keys, and at least one call whatever its size.
func TestRedisTake(t *testing.T) {
	s := NewRedis(&pipeline.Redis{})
	mk := func(n int) *call { return &call{ctx: context.Background(), items: make([]item, n)} }
	big, a, b, c := mk(maxBatchKeys+1), mk(maxBatchKeys-10), mk(10), mk(1)
	s.pending = []*call{big, a, b, c}
	if got := s.take(nil); len(got) != 1 || got[0] != big {
		t.Fatalf("first batch: %d calls, want the oversized call alone", len(got))
	}
	if got := s.take(nil); len(got) != 2 || got[0] != a || got[1] != b {
		t.Fatalf("second batch: %d calls, want a and b", len(got))
	}
	if got := s.take([]*call{mk(1)}); len(got) != 2 || got[1] != c {
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

// TestRedisScriptFlushed: after the server lost its scripts (a restart,
// SCRIPT FLUSH) a batch still runs (EVAL after the NOSCRIPT reply), and
// the script is cached again for the next one.
func TestRedisScriptFlushed(t *testing.T) {
	s, _, cmds := redisStore(t)
	ctx := context.Background()
	r := pipeline.Rate{Limit: 2, Period: time.Hour}
	check1(t, s, "a", r, 1)
	if err := s.r.Client.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	calls := []*call{s.newCall(ctx, []pipeline.RateCheck{{Key: "a", Rate: r}}), s.newCall(ctx, []pipeline.RateCheck{{Key: "a", Rate: r}})}
	s.exec(ctx, calls)
	out := make([]pipeline.RateResult, 1)
	for i, c := range calls {
		if c.err != nil {
			t.Fatalf("call %d after SCRIPT FLUSH: %v", i, c.err)
		}
		c.results(out)
		if out[0].Allowed != (i == 0) {
			t.Errorf("call %d: %+v, want allowed only for the first (the second of 2)", i, out[0])
		}
	}
	cmds.Store(0)
	check1(t, s, "b", r, 1)
	if n := cmds.Load(); n != 1 {
		t.Errorf("the check after took %d commands, want 1 (EVALSHA of the cached script)", n)
	}
}
