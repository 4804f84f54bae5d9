package ratelimit

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-mta/sluice/pipeline"
)

// gcraScript decides several GCRA checks at once, all or nothing.
// KEYS[i] is a check's key; ARGV holds three numbers per check: emission
// interval and tolerance in microseconds, and the cost. The clock is the
// server's (TIME), so every node agrees. It returns two integers per
// check: 1 and the remaining count when allowed, 0 and the retry-after
// in microseconds (-1: never) when not. Keys are charged only when every
// check is allowed, and expire when their TAT passes (they are then the
// same as absent). TATs are written with %d: tostring of a number near
// 1.7e15 would give "1.7e+15" in Lua 5.1.
const gcraScript = `
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local res, tats, ok = {}, {}, true
for i, key in ipairs(KEYS) do
  local e, tol, n = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local tat = tonumber(redis.call("GET", key) or now) or now
  if tat < now then tat = now end
  local nxt = tat + n * e
  local over = nxt - now - tol
  if over > 0 then
    ok = false
    res[2*i-1] = 0
    if n * e > tol then res[2*i] = -1 else res[2*i] = over end
  else
    res[2*i-1] = 1
    res[2*i] = math.floor((tol - (nxt - now)) / e)
    tats[i] = nxt
  end
end
if ok then
  for i, key in ipairs(KEYS) do
    redis.call("SET", key, string.format("%d", tats[i]), "PX", math.floor((tats[i] - now) / 1000) + 1)
  end
end
return res
`

var script = redis.NewScript(gcraScript)

// Redis is a pipeline.RateStore on the node's Redis (sluice.redis): one
// EVALSHA per Check whatever the number of checks (EVAL once more after
// the server lost its script cache). Keys are Prefix + "rl:" + the
// check's key. Safe for concurrent use.
//
// Redis Cluster is not supported: the keys of one Check would have to
// share a hash slot.
type Redis struct {
	r *pipeline.Redis
}

// NewRedis returns a store on r (which must not be nil).
func NewRedis(r *pipeline.Redis) *Redis { return &Redis{r: r} }

// Check implements pipeline.RateStore. An error (Redis unreachable, a
// timeout) leaves out undefined.
func (s *Redis) Check(ctx context.Context, checks []pipeline.RateCheck, out []pipeline.RateResult) error {
	keys := make([]string, len(checks))
	args := make([]any, 0, 3*len(checks))
	for i := range checks {
		c := &checks[i]
		keys[i] = s.r.Prefix + "rl:" + c.Key
		e, tol := gcra(c.Rate, 1000)
		args = append(args, strconv.FormatInt(e, 10), strconv.FormatInt(tol, 10), strconv.FormatInt(cost(c), 10))
	}
	if s.r.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.r.Timeout)
		defer cancel()
	}
	res, err := script.Run(ctx, s.r.Client, keys, args...).Int64Slice()
	if err != nil {
		return err
	}
	if len(res) != 2*len(checks) {
		return fmt.Errorf("ratelimit: redis script returned %d values for %d checks", len(res), len(checks))
	}
	for i := range checks {
		if res[2*i] == 1 {
			out[i] = pipeline.RateResult{Allowed: true, Remaining: int(res[2*i+1])}
			continue
		}
		ra := time.Duration(res[2*i+1]) * time.Microsecond
		if res[2*i+1] < 0 {
			ra = -1
		}
		out[i] = pipeline.RateResult{RetryAfter: ra}
	}
	return nil
}

var _ pipeline.RateStore = (*Redis)(nil)
