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

func TestParseRate(t *testing.T) {
	for _, c := range []struct {
		in   string
		want pipeline.Rate
		bad  bool
	}{
		{in: "100/minute", want: pipeline.Rate{Limit: 100, Period: time.Minute}},
		{in: "20/second", want: pipeline.Rate{Limit: 20, Period: time.Second}},
		{in: " 1000 / hour ", want: pipeline.Rate{Limit: 1000, Period: time.Hour}},
		{in: "5000/day", want: pipeline.Rate{Limit: 5000, Period: 24 * time.Hour}},
		{in: "10/30s", want: pipeline.Rate{Limit: 10, Period: 30 * time.Second}},
		{in: "3/h", want: pipeline.Rate{Limit: 3, Period: time.Hour}},
		{in: "100", bad: true},
		{in: "0/minute", bad: true},
		{in: "-1/minute", bad: true},
		{in: "x/minute", bad: true},
		{in: "10/fortnight", bad: true},
		{in: "10/1us", bad: true},
	} {
		got, err := ParseRate(c.in)
		if c.bad {
			if err == nil {
				t.Errorf("%q: accepted as %+v", c.in, got)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%q: %+v %v, want %+v", c.in, got, err, c.want)
		}
	}
	if s := FormatRate(pipeline.Rate{Limit: 5, Period: time.Minute}); s != "5/minute" {
		t.Errorf("FormatRate: %q", s)
	}
}

// clock is a Memory whose time the test moves.
func testMemory() (*Memory, *atomic.Int64) {
	m := NewMemory()
	var now atomic.Int64
	now.Store(int64(time.Hour))
	m.now = func() time.Duration { return time.Duration(now.Load()) }
	return m, &now
}

func check1(t *testing.T, s pipeline.RateStore, key string, r pipeline.Rate, n int) pipeline.RateResult {
	t.Helper()
	out := make([]pipeline.RateResult, 1)
	if err := s.Check(context.Background(), []pipeline.RateCheck{{Key: key, Rate: r, N: n}}, out); err != nil {
		t.Fatal(err)
	}
	return out[0]
}

// TestMemoryGCRA: N allowed then refused with the time to the next slot;
// the slot comes back after one emission interval; burst caps a fresh
// key; a cost larger than the burst is never allowed.
func TestMemoryGCRA(t *testing.T) {
	m, now := testMemory()
	r := pipeline.Rate{Limit: 5, Period: time.Second}
	for i := 0; i < 5; i++ {
		if res := check1(t, m, "k", r, 1); !res.Allowed || res.Remaining != 4-i {
			t.Fatalf("check %d: %+v", i+1, res)
		}
	}
	res := check1(t, m, "k", r, 1)
	if res.Allowed || res.RetryAfter != 200*time.Millisecond {
		t.Fatalf("6th: %+v, want refused with retry 200ms", res)
	}
	now.Add(int64(199 * time.Millisecond))
	if check1(t, m, "k", r, 1).Allowed {
		t.Fatal("allowed before the interval passed")
	}
	now.Add(int64(time.Millisecond))
	if !check1(t, m, "k", r, 1).Allowed {
		t.Fatal("refused after the interval")
	}
	if check1(t, m, "other", r, 1).Allowed != true {
		t.Fatal("keys are not independent")
	}

	b := pipeline.Rate{Limit: 100, Period: time.Minute, Burst: 3}
	for i := 0; i < 3; i++ {
		if !check1(t, m, "b", b, 1).Allowed {
			t.Fatalf("burst check %d refused", i+1)
		}
	}
	if res := check1(t, m, "b", b, 1); res.Allowed || res.RetryAfter != 600*time.Millisecond {
		t.Fatalf("after burst: %+v", res)
	}
	if res := check1(t, m, "c", b, 4); res.Allowed || res.RetryAfter != -1 {
		t.Fatalf("cost over burst: %+v", res)
	}
}

// TestMemoryAllOrNothing: when one check of a call is refused, the others
// are not charged.
func TestMemoryAllOrNothing(t *testing.T) { allOrNothing(t, NewMemory()) }

func allOrNothing(t *testing.T, s pipeline.RateStore) {
	big := pipeline.Rate{Limit: 10, Period: time.Hour}
	one := pipeline.Rate{Limit: 1, Period: time.Hour}
	ctx := context.Background()
	out := make([]pipeline.RateResult, 2)
	checks := []pipeline.RateCheck{{Key: "aon:big", Rate: big}, {Key: "aon:one", Rate: one}}
	if err := s.Check(ctx, checks, out); err != nil || !out[0].Allowed || !out[1].Allowed {
		t.Fatalf("first: %+v %v", out, err)
	}
	for i := 0; i < 5; i++ {
		if err := s.Check(ctx, checks, out); err != nil || out[1].Allowed {
			t.Fatalf("repeat %d: %+v %v", i, out, err)
		}
	}
	// big was charged once: 9 left.
	if res := check1(t, s, "aon:big", big, 9); !res.Allowed || res.Remaining != 0 {
		t.Fatalf("big after refusals: %+v, want 9 more allowed", res)
	}
}

// TestMemoryEviction: idle keys are dropped as new ones arrive.
func TestMemoryEviction(t *testing.T) {
	m, now := testMemory()
	r := pipeline.Rate{Limit: 10, Period: time.Second}
	for i := 0; i < 100_000; i++ {
		check1(t, m, "k"+strconv.Itoa(i), r, 1)
		now.Add(int64(time.Millisecond)) // a key is idle 100ms after its check
	}
	if n := m.Len(); n > 64*minSweep*2 {
		t.Fatalf("%d keys held; idle keys are not evicted", n)
	}
}

func redisStore(t testing.TB) (*Redis, *tu.Redis, *atomic.Int64) {
	rs := tu.StartRedis(t)
	c := redis.NewClient(&redis.Options{Addr: rs.Addr, MaxRetries: -1, Protocol: 2, DisableIdentity: true})
	t.Cleanup(func() { c.Close() })
	var cmds atomic.Int64
	c.AddHook(countHook{&cmds})
	return NewRedis(&pipeline.Redis{Client: c, Prefix: "t:", Timeout: 2 * time.Second}), rs, &cmds
}

// countHook counts round trips: a command, or a pipeline of them.
type countHook struct{ n *atomic.Int64 }

func (countHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h.n.Add(1); return next(ctx, cmd) }
}
func (h countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { h.n.Add(1); return next(ctx, cmds) }
}

// TestRedisGCRA: the script enforces the same boundary as memory, two
// clients share one limit, a call is all or nothing, and a stopped Redis
// is an error.
func TestRedisGCRA(t *testing.T) {
	s, rs, cmds := redisStore(t)
	r := pipeline.Rate{Limit: 5, Period: time.Hour}
	for i := 0; i < 5; i++ {
		if res := check1(t, s, "k", r, 1); !res.Allowed || res.Remaining != 4-i {
			t.Fatalf("check %d: %+v", i+1, res)
		}
	}
	res := check1(t, s, "k", r, 1)
	if res.Allowed || res.RetryAfter < 11*time.Minute || res.RetryAfter > 12*time.Minute {
		t.Fatalf("6th: %+v, want refused with retry ~12m", res)
	}
	// A second client (another node) sees the same state.
	c2 := redis.NewClient(&redis.Options{Addr: rs.Addr})
	defer c2.Close()
	s2 := NewRedis(&pipeline.Redis{Client: c2, Prefix: "t:"})
	if check1(t, s2, "k", r, 1).Allowed {
		t.Fatal("second client was allowed past the shared limit")
	}
	if res := check1(t, s2, "c", pipeline.Rate{Limit: 3, Period: time.Hour}, 4); res.Allowed || res.RetryAfter != -1 {
		t.Fatalf("cost over burst: %+v", res)
	}
	allOrNothing(t, s)

	cmds.Store(0)
	out := make([]pipeline.RateResult, 3)
	three := []pipeline.RateCheck{{Key: "x", Rate: r}, {Key: "y", Rate: r}, {Key: "z", Rate: r}}
	if err := s.Check(context.Background(), three, out); err != nil {
		t.Fatal(err)
	}
	if n := cmds.Load(); n != 1 {
		t.Errorf("three checks took %d round trips, want 1", n)
	}

	// Recovery over a short window, on the server's clock.
	fast := pipeline.Rate{Limit: 5, Period: time.Second}
	for i := 0; i < 5; i++ {
		check1(t, s, "fast", fast, 1)
	}
	if check1(t, s, "fast", fast, 1).Allowed {
		t.Fatal("6th of 5/second allowed")
	}
	tu.WaitFor(t, "a slot of 5/second to come back", func() bool { return check1(t, s, "fast", fast, 1).Allowed })

	rs.Stop()
	if err := s.Check(context.Background(), three, out); err == nil {
		t.Fatal("no error with Redis stopped")
	}
}

// TestRedisConcurrent: 40 goroutines × 10 checks of one key limited to
// 100 per hour: exactly 100 are allowed, however the calls were batched,
// and the batches took fewer round trips than there were calls; then
// the store is idle. Half the goroutines may run batches themselves (no
// deadline), half may not (a deadline before the store's timeout, as a
// Lua hook's).
func TestRedisConcurrent(t *testing.T) {
	s, _, cmds := redisStore(t)
	s.r.Timeout = time.Minute
	r := pipeline.Rate{Limit: 100, Period: time.Hour}
	check1(t, s, "warm", r, 1) // loads the script
	cmds.Store(0)
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 40; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := sessionCtx(g)
			defer cancel()
			out := make([]pipeline.RateResult, 2)
			for i := 0; i < 10; i++ {
				checks := []pipeline.RateCheck{{Key: "conc", Rate: r}, {Key: "other" + strconv.Itoa(g), Rate: r}}
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
	if n := cmds.Load(); n >= 400 {
		t.Fatalf("%d round trips for 400 calls", n)
	}
	t.Logf("400 calls in %d round trips", cmds.Load())
	// A batch goroutine signals its callers before it looks for more
	// work and ends its turn: the last one may still be on its way out.
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		runners, pending := s.runners, len(s.pending)
		s.mu.Unlock()
		if runners == 0 && pending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("store not idle 10 s after the calls: %d runners, %d pending", runners, pending)
		}
		time.Sleep(time.Millisecond)
	}
}

// sessionCtx is the context of concurrent test caller g: none for even
// g (it may run batches itself, as an SMTP session), a deadline before
// the store's minute for odd g (as a Lua hook's: it never runs one).
func sessionCtx(g int) (context.Context, context.CancelFunc) {
	if g%2 == 1 {
		return context.WithTimeout(context.Background(), 50*time.Second)
	}
	return context.Background(), func() {}
}

// BenchmarkMemoryCheck: one check of a limit that is never exceeded,
// over 10,000 keys, from all cores.
func BenchmarkMemoryCheck(b *testing.B) {
	m := NewMemory()
	r := pipeline.Rate{Limit: 1 << 30, Period: time.Second}
	keys := make([]string, 10_000)
	for i := range keys {
		keys[i] = "stage/tenant/1073741824/second:tenant-" + strconv.Itoa(i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		checks := make([]pipeline.RateCheck, 1)
		out := make([]pipeline.RateResult, 1)
		i := 0
		for pb.Next() {
			checks[0] = pipeline.RateCheck{Key: keys[i%len(keys)], Rate: r}
			_ = m.Check(context.Background(), checks, out)
			i++
		}
	})
}

// BenchmarkNodeMemoryCheck: the same through the node's store, with its
// metrics.
func BenchmarkNodeMemoryCheck(b *testing.B) {
	mt, _ := NewMetrics(nil)
	s := NewNode(nil, mt, nil).Memory
	r := pipeline.Rate{Limit: 1 << 30, Period: time.Second}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		checks := []pipeline.RateCheck{{Key: "k", Rate: r, Stage: "limits", Limit: "tenant"}}
		out := make([]pipeline.RateResult, 1)
		i := 0
		for pb.Next() {
			checks[0].Key = "k" + strconv.Itoa(i%1000)
			_ = s.Check(context.Background(), checks, out)
			i++
		}
	})
}

// BenchmarkRedisCheck: one call of 1 and of 3 checks on a real
// redis-server over loopback (without its fsync per write), one goroutine
// and 20, without leases (lease1: every call goes to Redis) and with the
// default (lease32: the rate allows leases of 32); trips/op is the number
// of round trips per call (below 1 when concurrent calls share a script
// run or leases answer them), client-cpu-µs/op and redis-cpu-µs/op the
// CPU of this process and of the redis-server per call.
func BenchmarkRedisCheck(b *testing.B) {
	for _, lease := range []int{1, DefaultLease} {
		sfx := "-lease" + strconv.Itoa(lease)
		for _, n := range []int{1, 3} {
			b.Run(strconv.Itoa(n)+"keys"+sfx, func(b *testing.B) {
				s, _, cmds := redisStore(b)
				s.lease = lease
				quietRedis(b, s.r.Client)
				r := pipeline.Rate{Limit: 1 << 30, Period: time.Second}
				checks := make([]pipeline.RateCheck, n)
				out := make([]pipeline.RateResult, n)
				for i := range checks {
					checks[i] = pipeline.RateCheck{Key: "bench" + strconv.Itoa(i), Rate: r}
				}
				_ = s.Check(context.Background(), checks, out) // loads the script
				cmds.Store(0)
				b.ReportAllocs()
				b.ResetTimer()
				cpu := startCPU(b, s.r.Client)
				for i := 0; i < b.N; i++ {
					if err := s.Check(context.Background(), checks, out); err != nil {
						b.Fatal(err)
					}
				}
				cpu.report(b)
				b.ReportMetric(float64(cmds.Load())/float64(b.N), "trips/op")
			})
		}
		b.Run("3keys-parallel20"+sfx, func(b *testing.B) {
			s, _, cmds := redisStore(b)
			s.lease = lease
			quietRedis(b, s.r.Client)
			r := pipeline.Rate{Limit: 1 << 30, Period: time.Second}
			_ = s.Check(context.Background(), []pipeline.RateCheck{{Key: "warm", Rate: r}}, make([]pipeline.RateResult, 1))
			cmds.Store(0)
			var g atomic.Int64
			b.SetParallelism(10) // 20 goroutines on 2 cores, as 20 SMTP sessions
			b.ReportAllocs()
			b.ResetTimer()
			cpu := startCPU(b, s.r.Client)
			b.RunParallel(func(pb *testing.PB) {
				id := strconv.Itoa(int(g.Add(1)))
				checks := []pipeline.RateCheck{{Key: "a" + id, Rate: r}, {Key: "b" + id, Rate: r}, {Key: "c" + id, Rate: r}}
				out := make([]pipeline.RateResult, 3)
				for pb.Next() {
					if err := s.Check(context.Background(), checks, out); err != nil {
						b.Error(err)
						return
					}
				}
			})
			cpu.report(b)
			b.ReportMetric(float64(cmds.Load())/float64(b.N), "trips/op")
		})
	}
}
