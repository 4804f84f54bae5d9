package ratelimit

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	tu "github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestRedisCallerDeadline: with a Redis that never answers and a store
// timeout of a minute, callers whose contexts end (a Lua hook's deadline,
// a client gone) stop waiting with their context's error, whether they
// lead a batch or wait behind one; the store serves again afterwards.
func TestRedisCallerDeadline(t *testing.T) {
	c := hungRedis(t)
	s := NewRedis(&pipeline.Redis{Client: c, Prefix: "t:", Timeout: time.Minute})
	r := pipeline.Rate{Limit: 5, Period: time.Second}
	var wg sync.WaitGroup
	errs := make([]error, 5)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			errs[i] = s.Check(ctx, []pipeline.RateCheck{{Key: "k", Rate: r}}, make([]pipeline.RateResult, 1))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("caller %d: %v, want its context's deadline", i, err)
		}
	}
	// A caller already cancelled is not sent.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Check(ctx, []pipeline.RateCheck{{Key: "k", Rate: r}}, make([]pipeline.RateResult, 1)); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled caller: %v", err)
	}
}

// TestNodeCallerGone: a check whose caller went away (context cancelled;
// with no deadline it runs its call itself and returns when the store's
// timeout ends it) is not a store error in
// sluice_ratelimit_store_errors_total; one whose deadline passed while
// Redis did not answer is.
func TestNodeCallerGone(t *testing.T) {
	c := hungRedisFor(t, 300*time.Millisecond) // as sluice.redis's timeout sets the client's
	m, err := NewMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	s := NewNode(&pipeline.Redis{Client: c, Prefix: "t:", Timeout: 300 * time.Millisecond}, m, nil).Redis
	checks := []pipeline.RateCheck{{Key: "k", Rate: pipeline.Rate{Limit: 1, Period: time.Second}, Stage: "s", Limit: "l"}}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	if err := s.Check(ctx, checks, make([]pipeline.RateResult, 1)); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	if n := promtest.ToFloat64(m.errs.WithLabelValues("redis")); n != 0 {
		t.Errorf("a cancelled caller counted %v store errors", n)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := s.Check(ctx, checks, make([]pipeline.RateResult, 1)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("deadline: %v", err)
	}
	if n := promtest.ToFloat64(m.errs.WithLabelValues("redis")); n != 1 {
		t.Errorf("a deadline passed without an answer: %v store errors, want 1", n)
	}
}

// hungRedis is a client of a Redis that never answers (testutil.Blackhole),
// with a minute for each read and write.
func hungRedis(t *testing.T) *redis.Client { return hungRedisFor(t, time.Minute) }

// hungRedisFor is hungRedis with d for each read and write.
func hungRedisFor(t *testing.T, d time.Duration) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: tu.Blackhole(t), MaxRetries: -1, Protocol: 2, DisableIdentity: true,
		ReadTimeout: d, WriteTimeout: d})
	t.Cleanup(func() { c.Close() })
	return c
}
