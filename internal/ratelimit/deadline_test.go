package ratelimit

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	tu "github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestRedisCallerDeadline: with a Redis that never answers and a store
// timeout of a minute, callers whose contexts end (a Lua hook's deadline,
// a client gone) stop waiting with their context's error, whether they
// lead a batch or wait behind one; the store serves again afterwards.
func TestRedisCallerDeadline(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: tu.Blackhole(t), MaxRetries: -1, Protocol: 2, DisableIdentity: true,
		ReadTimeout: time.Minute, WriteTimeout: time.Minute})
	t.Cleanup(func() { c.Close() })
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
