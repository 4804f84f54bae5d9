package luahost

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	rl "github.com/sluice-mta/sluice/internal/ratelimit"
	tu "github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestRateLimitCheckSlowRedis: with a Redis that never answers and a
// Redis timeout longer than the hook's (the defaults are 500ms and
// 100ms), sluice.ratelimit.check returns nil, message within the hook's
// time, and the script's own decision (here: let it through) stands,
// instead of the hook being stopped with 451 4.4.5.
func TestRateLimitCheckSlowRedis(t *testing.T) {
	st, h, _ := inline(t, `on_rcpt = function(txn, rcpt)
  local ok, err = sluice.ratelimit.check("k", "2/minute")
  if ok == nil then return sluice.accept() end
  return sluice.reject(550, "5.0.0", "checked: " .. tostring(ok))
end`)
	c := redis.NewClient(&redis.Options{Addr: tu.Blackhole(t), MaxRetries: -1, Protocol: 2, DisableIdentity: true,
		ReadTimeout: time.Minute, WriteTimeout: time.Minute})
	t.Cleanup(func() { c.Close() })
	h.SetRateLimits(&pipeline.RateLimits{Memory: rl.NewMemory(),
		Redis: rl.NewRedis(&pipeline.Redis{Client: c, Prefix: "t:", Timeout: time.Minute})})
	v, err := rcptHook(t, st).OnRcpt(bg, testTxn(), rcpt(t, "a@example.org"))
	if err != nil || v.Action != pipeline.Accept {
		t.Fatalf("hook: %+v %v, want the script's accept after nil, message", v, err)
	}
}
