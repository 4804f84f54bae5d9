package ratelimit

import (
	"context"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	tu "github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// heldFor is the events s holds leased and unexpired for key (the
// store's key, without the "t:rl:" prefix).
func heldFor(s *Redis, key string) int64 {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	if l := s.leases["t:rl:"+key]; l != nil && l.expires > s.now() {
		return l.avail
	}
	return 0
}

// TestRedisLeaseMixedConservation: two nodes, 20 sessions each, checks
// of one to three of four fast keys with costs of 1 to 3 (as a Lua
// hook's count), a fifth of them also checking a key that is full (so
// the whole call is refused while its other keys may have been taken
// from leases). No call with the full key is allowed, and for every key
// Redis charged exactly what the nodes admitted plus what they still
// hold: nothing leaked (charged and neither admitted nor held) and
// nothing spent twice (admitted beyond what was charged). The nodes'
// lease clocks stand still, so no lease expires. Each key is first
// charged 100,000 events (100 s of its rate), so its TAT stays ahead of
// the server's clock and gives the count charged.
func TestRedisLeaseMixedConservation(t *testing.T) { mixedConservation(t, false) }

// TestRedisLeaseMixedExpiry: the same with the nodes' lease clocks
// moving a quarter of LeaseTTL at a time while the sessions run, so that
// leases expire between a check's hold and its round trip's end, and
// are dropped, renewed and swept concurrently: over all keys, Redis
// charged exactly what the nodes admitted, plus what their leases still
// count (expired or not), plus what sluice_ratelimit_lease_events_total
// counted lost.
func TestRedisLeaseMixedExpiry(t *testing.T) { mixedConservation(t, true) }

func mixedConservation(t *testing.T, expire bool) {
	rs := tu.StartRedis(t)
	a, b := leaseNode(t, rs, 0), leaseNode(t, rs, 0)
	m, err := NewMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*testNode{a, b} {
		s.leasedEvents, s.lostEvents = m.lease.WithLabelValues("leased"), m.lease.WithLabelValues("lost")
	}
	ctx := context.Background()
	keys := []string{"m0", "m1", "m2", "m3"}
	const prime = 100_000
	t0 := map[string]int64{}
	for _, k := range keys {
		out := make([]pipeline.RateResult, 1)
		if err := a.Check(ctx, []pipeline.RateCheck{{Key: k, Rate: fast, N: prime}}, out); err != nil || !out[0].Allowed {
			t.Fatalf("priming %s: %+v %v", k, out[0], err)
		}
		tat, err := a.r.Client.Get(ctx, "t:rl:"+k).Int64()
		if err != nil {
			t.Fatal(err)
		}
		t0[k] = tat - prime*1000
	}
	one := pipeline.Rate{Limit: 1, Period: time.Hour}
	check1(t, a, "full", one, 1)

	var admitted [4]atomic.Int64
	var wrong atomic.Int64
	var wg sync.WaitGroup
	for ni, s := range []*testNode{a, b} {
		for g := 0; g < 20; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rnd := rand.New(rand.NewPCG(uint64(ni), uint64(g)))
				ctx, cancel := sessionCtx(g)
				defer cancel()
				out := make([]pipeline.RateResult, 5)
				for i := 0; i < 150; i++ {
					if expire && g == 0 && i%5 == 0 {
						// Leases also expire between checks, whatever
						// the ticker below managed on a loaded machine.
						a.clock.Add(int64(LeaseTTL / 2))
						b.clock.Add(int64(LeaseTTL / 2))
					}
					var checks []pipeline.RateCheck
					var idx []int
					for _, k := range rnd.Perm(4)[:1+rnd.IntN(3)] {
						checks = append(checks, pipeline.RateCheck{Key: keys[k], Rate: fast, N: 1 + rnd.IntN(3)})
						idx = append(idx, k)
					}
					full := rnd.IntN(5) == 0
					if full {
						checks = append(checks, pipeline.RateCheck{Key: "full", Rate: one})
					}
					if err := s.Check(ctx, checks, out); err != nil {
						t.Error(err)
						return
					}
					all := true
					for j := range checks {
						all = all && out[j].Allowed
					}
					if all == full {
						wrong.Add(1)
						continue
					}
					if all {
						for j, k := range idx {
							admitted[k].Add(int64(checks[j].N))
						}
					}
				}
			}()
		}
	}
	stop := make(chan struct{})
	ticked := make(chan struct{})
	go func() {
		defer close(ticked)
		for expire {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
				a.clock.Add(int64(LeaseTTL / 4))
				b.clock.Add(int64(LeaseTTL / 4))
			}
		}
	}()
	wg.Wait()
	close(stop)
	<-ticked
	if n := wrong.Load(); n != 0 {
		t.Fatalf("%d calls decided wrongly (a call with the full key allowed, or one without it refused)", n)
	}
	tm, err := a.r.Client.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	var charged, admittedAll, leased int64
	for i, k := range keys {
		tat, err := a.r.Client.Get(ctx, "t:rl:"+k).Int64()
		if err != nil {
			t.Fatal(err)
		}
		if tat <= tm.UnixMicro() {
			t.Fatalf("%s: the TAT fell behind the server's clock (the test took over 100 s)", k)
		}
		c := (tat-t0[k])/1000 - prime
		held := heldFor(a.Redis, k) + heldFor(b.Redis, k)
		if !expire && c != admitted[i].Load()+held {
			t.Errorf("%s: Redis charged %d events; the nodes admitted %d and hold %d", k, c, admitted[i].Load(), held)
		}
		charged += c
		admittedAll += admitted[i].Load()
		for _, s := range []*testNode{a, b} {
			leased += leaseCount(s.Redis, k)
		}
	}
	lost := int64(promtest.ToFloat64(a.lostEvents))
	t.Logf("charged %d, admitted %d, in leases %d, lost %d", charged, admittedAll, leased, lost)
	if charged != admittedAll+leased+lost {
		t.Errorf("Redis charged %d events; the nodes admitted %d, their leases count %d and %d were counted lost", charged, admittedAll, leased, lost)
	}
	if expire && lost == 0 {
		t.Error("no lease expired: the test did not test expiry")
	}
}

// leaseCount is what s's lease of key counts, expired or not.
func leaseCount(s *Redis, key string) int64 {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	if l := s.leases["t:rl:"+key]; l != nil {
		return l.avail
	}
	return 0
}

// TestRedisLeaseKeyCap: with maxLeaseKeys keys holding a lease, a new
// key is checked without one (its script run asks for its cost only and
// nothing is held for it), and once the leases expire the next new key
// gets one again (the full map is swept).
func TestRedisLeaseKeyCap(t *testing.T) {
	if testing.Short() {
		t.Skip("fills 100,000 leases")
	}
	rs := tu.StartRedis(t)
	s := leaseNode(t, rs, 0)
	ctx := context.Background()
	const per = 250
	checks := make([]pipeline.RateCheck, per)
	out := make([]pipeline.RateResult, per)
	for i := 0; i < maxLeaseKeys/per; i++ {
		for j := range checks {
			checks[j] = pipeline.RateCheck{Key: "cap" + strconv.Itoa(i*per+j), Rate: fast}
		}
		if err := s.Check(ctx, checks, out); err != nil {
			t.Fatal(err)
		}
	}
	s.lmu.Lock()
	n := len(s.leases)
	s.lmu.Unlock()
	if n != maxLeaseKeys {
		t.Fatalf("%d leases after %d keys, want %d", n, maxLeaseKeys, maxLeaseKeys)
	}
	s.hook.reset()
	if res := check1(t, s, "new", fast, 1); !res.Allowed {
		t.Fatalf("a new key past the cap: %+v", res)
	}
	if argv := s.hook.argv; len(argv) != 1 || argv[0][4] != int64(1) {
		t.Fatalf("a new key past the cap asked Redis for %v, want its cost only (1)", argv)
	}
	if h := heldFor(s.Redis, "new"); h != 0 {
		t.Fatalf("%d held for a key past the cap", h)
	}
	s.clock.Add(int64(LeaseTTL))
	s.hook.reset()
	check1(t, s, "newer", fast, 1)
	if h := heldFor(s.Redis, "newer"); h != 31 {
		t.Fatalf("%d held for a new key once the leases expired, want 31", h)
	}
	s.lmu.Lock()
	n = len(s.leases)
	s.lmu.Unlock()
	if n != 1 {
		t.Errorf("%d leases after the sweep, want 1", n)
	}
}

// TestRedisLeaseBatchRoom: two calls of one key in one batch, with room
// in Redis for both but not for a whole lease besides: both are allowed
// (the lease takes what is left after them), rather than the first
// leasing all the room and the second being refused while the node holds
// events leased for that very key. The key allows 40 events a second
// with a burst of 8 (leases of 2) and has 6 charged: room for 2, and a
// third only after 25 ms.
func TestRedisLeaseBatchRoom(t *testing.T) {
	rs := tu.StartRedis(t)
	s := leaseNode(t, rs, 0)
	ctx := context.Background()
	r := pipeline.Rate{Limit: 40, Period: time.Second, Burst: 8}
	if l := leaseSize(r, DefaultLease); l != 2 {
		t.Fatalf("lease of %v: %d, want 2", r, l)
	}
	out := make([]pipeline.RateResult, 1)
	if err := s.Check(ctx, []pipeline.RateCheck{{Key: "room", Rate: r, N: 6}}, out); err != nil || !out[0].Allowed {
		t.Fatalf("charging 6: %+v %v", out[0], err)
	}
	calls := []*call{
		s.newCall(ctx, []pipeline.RateCheck{{Key: "room", Rate: r}}),
		s.newCall(ctx, []pipeline.RateCheck{{Key: "room", Rate: r}}),
	}
	s.exec(ctx, calls)
	for i, c := range calls {
		if c.err != nil {
			t.Fatal(c.err)
		}
		c.results(out)
		if !out[0].Allowed {
			t.Errorf("call %d of the batch refused (%+v) with room for both; the node holds %d leased for the key", i+1, out[0], heldFor(s.Redis, "room"))
		}
	}
}

// TestRedisLeaseExpiresInFlight: a call takes an event from a lease,
// the lease expires while its round trip is in flight, and Redis refuses
// the call's other key: the event does not go back to the expired lease
// (it is lost, as the lease's other events), and the next check of the
// key takes a new lease from Redis (of half the size: see
// TestRedisLeaseAdapts).
func TestRedisLeaseExpiresInFlight(t *testing.T) {
	s := countedLeaseNode(t)
	ctx := context.Background()
	one := pipeline.Rate{Limit: 1, Period: time.Hour}
	check1(t, s, "fl", fast, 1)
	check1(t, s, "full", one, 1)
	c := s.newCall(ctx, []pipeline.RateCheck{{Key: "fl", Rate: fast}, {Key: "full", Rate: one}})
	if s.hold(c) || !c.items[0].held {
		t.Fatal("the leased key was not taken from its lease")
	}
	s.clock.Add(int64(LeaseTTL))
	s.exec(ctx, []*call{c})
	out := make([]pipeline.RateResult, 2)
	c.results(out)
	if c.err != nil || out[1].Allowed {
		t.Fatalf("the full key: %+v %v, want refused", out[1], c.err)
	}
	if h := s.Held(); h != 0 {
		t.Fatalf("%d held after the lease expired", h)
	}
	s.hook.reset()
	check1(t, s, "fl", fast, 1)
	if n, h := s.hook.trips(), heldFor(s.Redis, "fl"); n != 1 || h != 15 {
		t.Fatalf("after expiry: %d round trips, %d held; want 1 and 15", n, h)
	}
	if lost := promtest.ToFloat64(s.lostEvents); lost != 31 {
		t.Errorf("%v events counted lost, want 31 (30 left in the lease, 1 taken back after it expired)", lost)
	}
}

// TestRedisLeaseRestart: Redis restarts (its keys kept, its scripts
// gone) while the node holds a lease. A call that takes an event from
// the lease and needs Redis for a full key runs the script again (EVAL
// after NOSCRIPT), is refused as before the restart, and gives the event
// back; the lease is then spent to its end and the next check leases
// again.
func TestRedisLeaseRestart(t *testing.T) {
	rs := tu.StartRedis(t)
	s := leaseNode(t, rs, 0)
	ctx := context.Background()
	one := pipeline.Rate{Limit: 1, Period: time.Hour}
	check1(t, s, "rr", fast, 1)
	check1(t, s, "full", one, 1)
	rs.Stop()
	rs.Start()
	out := make([]pipeline.RateResult, 2)
	if err := s.Check(ctx, []pipeline.RateCheck{{Key: "rr", Rate: fast}, {Key: "full", Rate: one}}, out); err != nil {
		t.Fatalf("after the restart: %v", err)
	}
	if !out[0].Allowed || out[1].Allowed {
		t.Fatalf("after the restart: %+v, want the full key still refused", out)
	}
	if h := heldFor(s.Redis, "rr"); h != 31 {
		t.Fatalf("%d held after the refused call, want 31 (its event back)", h)
	}
	s.hook.reset()
	for i := 0; i < 31; i++ {
		check1(t, s, "rr", fast, 1)
	}
	if n := s.hook.trips(); n != 0 {
		t.Fatalf("%d round trips spending the lease", n)
	}
	check1(t, s, "rr", fast, 1)
	if n, h := s.hook.trips(), heldFor(s.Redis, "rr"); n != 1 || h != 31 {
		t.Errorf("past the lease: %d round trips, %d held; want 1 and 31", n, h)
	}
}

// countedLeaseNode is leaseNode with the default lease on a Redis of its
// own, counting its leased and lost events.
func countedLeaseNode(t *testing.T) *testNode {
	s := leaseNode(t, tu.StartRedis(t), 0)
	m, err := NewMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	s.leasedEvents, s.lostEvents = m.lease.WithLabelValues("leased"), m.lease.WithLabelValues("lost")
	return s
}

// TestRedisLeaseAdapts: a node that sends a fast key about once per
// lease lifetime must not charge Redis a whole lease per message (with
// 30 such nodes on a 640/second key, 4.5% of its rate, the leases they
// lost kept the key's bucket empty and a burst of 100 concurrent
// messages got 6 through; without leases all 100): each lease that
// expires unspent halves the next, so ten such messages lose less than
// two leases' worth. A key the node then sends fast gets its whole lease
// back, doubling with each lease spent within its lifetime.
func TestRedisLeaseAdapts(t *testing.T) {
	s := countedLeaseNode(t)
	for i := 0; i < 10; i++ {
		if res := check1(t, s, "slowly", fast, 1); !res.Allowed {
			t.Fatalf("check %d: %+v", i+1, res)
		}
		s.clock.Add(int64(LeaseTTL))
	}
	if lost := promtest.ToFloat64(s.lostEvents); lost >= 2*DefaultLease {
		t.Errorf("10 checks a lease lifetime apart lost %v leased events, want under %d", lost, 2*DefaultLease)
	}
	s.hook.reset()
	for i := 0; i < 200; i++ {
		check1(t, s, "slowly", fast, 1)
	}
	if n := s.hook.trips(); n > 200/DefaultLease+2*6 {
		t.Errorf("200 checks without a pause took %d round trips: the lease did not grow back", n)
	}
	s.hook.reset()
	for i := 0; i < 64; i++ {
		check1(t, s, "slowly", fast, 1)
	}
	if n := s.hook.trips(); n > 3 {
		t.Errorf("64 more checks took %d round trips, want at most 3 (leases of %d again)", n, DefaultLease)
	}
}
