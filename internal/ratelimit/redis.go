package ratelimit

import (
	"context"
	"fmt"
	"strconv"
	"sync"
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
// EVALSHA per Check whatever the number of checks. Keys are Prefix +
// "rl:" + the check's key. Safe for concurrent use.
//
// Calls from concurrent sessions are coalesced (group commit): while one
// batch is in flight, the calls that arrive wait and then go together as
// one pipeline, one write and one read for all of them. A lone call goes
// at once. A batch is bounded by sluice.redis's timeout, so a call waits
// at most for the batch in flight and its own; a caller whose deadline
// comes first stops waiting then (and its call is dropped if its batch
// has not been sent yet), so a Lua hook's deadline is kept. A lone call
// with no such deadline runs on its caller's goroutine (see do): a
// cancelled caller then returns when its round trip ends.
//
// Redis Cluster is not supported: the keys of one Check would have to
// share a hash slot.
type Redis struct {
	r *pipeline.Redis

	mu      sync.Mutex
	busy    bool    // a goroutine is running batches (loop)
	pending []*call // calls waiting for the next batch
}

// call is one Check waiting in a batch. res and err are written by the
// batch goroutine before done is closed; a caller that stopped waiting
// never reads them.
type call struct {
	ctx  context.Context
	keys []string
	args []any
	res  []int64
	err  error
	done chan struct{}
}

// NewRedis returns a store on r (which must not be nil).
func NewRedis(r *pipeline.Redis) *Redis { return &Redis{r: r} }

// Check implements pipeline.RateStore. An error (Redis unreachable, a
// timeout, ctx ending first) leaves out undefined.
func (s *Redis) Check(ctx context.Context, checks []pipeline.RateCheck, out []pipeline.RateResult) error {
	c := &call{ctx: ctx, keys: make([]string, len(checks)), args: make([]any, 0, 3*len(checks)), done: make(chan struct{})}
	for i := range checks {
		ck := &checks[i]
		c.keys[i] = s.r.Prefix + "rl:" + ck.Key
		e, tol := gcra(ck.Rate, 1000)
		c.args = append(c.args, strconv.FormatInt(e, 10), strconv.FormatInt(tol, 10), strconv.FormatInt(cost(ck), 10))
	}
	res, err := s.do(ctx, c)
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

// do queues c for the next batch and waits for its result or for ctx to
// end. A call that finds no batch in flight sends itself at once from
// its own goroutine (a lone call then costs no goroutine switch: about
// half the client CPU of a call) when ctx has no deadline before
// sluice.redis's timeout; it then returns when its round trip ends, at
// most that timeout after ctx is cancelled (a client gone). A caller
// with an earlier deadline (a Lua hook's) hands its call to a batch
// goroutine and stops waiting at its deadline. The calls that arrive
// while one is in flight go together on a batch goroutine.
func (s *Redis) do(ctx context.Context, c *call) ([]int64, error) {
	s.mu.Lock()
	s.pending = append(s.pending, c)
	lead := !s.busy
	s.busy = true
	s.mu.Unlock()
	if lead && s.inline(ctx) {
		s.mu.Lock()
		batch := s.pending // c, and the calls that came since
		s.pending = nil
		s.mu.Unlock()
		s.run(batch)
		s.mu.Lock()
		if len(s.pending) == 0 {
			s.busy = false
		} else {
			go s.loop()
		}
		s.mu.Unlock()
		if c.err != nil && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return c.res, c.err
	}
	if lead {
		go s.loop()
	}
	select {
	case <-c.done:
		return c.res, c.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// inline reports whether a caller with ctx may run a batch on its own
// goroutine without outliving its deadline: the batch is bounded by
// sluice.redis's timeout, and ctx has no deadline before it.
func (s *Redis) inline(ctx context.Context) bool {
	if s.r.Timeout <= 0 {
		return false
	}
	d, ok := ctx.Deadline()
	return !ok || time.Until(d) >= s.r.Timeout
}

// loop runs batches until none is pending. Only the other sessions'
// calls share a batch, so no caller's context bounds it: the timeout
// does.
func (s *Redis) loop() {
	for {
		s.mu.Lock()
		batch := s.pending
		s.pending = nil
		if len(batch) == 0 {
			s.busy = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		s.run(batch)
	}
}

// run sends the calls of batch whose callers still wait, bounded by
// sluice.redis's timeout, and closes every call's done.
func (s *Redis) run(batch []*call) {
	live := make([]*call, 0, len(batch))
	for _, c := range batch {
		if err := c.ctx.Err(); err != nil {
			c.err = err // its caller has gone: not sent, not charged
			close(c.done)
			continue
		}
		live = append(live, c)
	}
	if len(live) == 0 {
		return
	}
	ctx, cancel := context.Background(), context.CancelFunc(func() {})
	if s.r.Timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, s.r.Timeout)
	}
	s.exec(ctx, live)
	cancel()
	for _, c := range live {
		close(c.done)
	}
}

// exec runs a batch: one EVALSHA alone (EVAL after a NOSCRIPT), or a
// pipeline of them (the script is loaded and the pipeline run again once
// after a NOSCRIPT: the server restarted or flushed its scripts).
func (s *Redis) exec(ctx context.Context, batch []*call) {
	if len(batch) == 1 {
		c := batch[0]
		c.res, c.err = script.Run(ctx, s.r.Client, c.keys, c.args...).Int64Slice()
		return
	}
	for try := 0; ; try++ {
		pipe := s.r.Client.Pipeline()
		cmds := make([]*redis.Cmd, len(batch))
		for i, c := range batch {
			cmds[i] = script.EvalSha(ctx, pipe, c.keys, c.args...)
		}
		_, err := pipe.Exec(ctx)
		if try == 0 && err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			if lerr := script.Load(ctx, s.r.Client).Err(); lerr == nil {
				continue
			}
		}
		for i, c := range batch {
			c.res, c.err = cmds[i].Int64Slice()
		}
		return
	}
}

var _ pipeline.RateStore = (*Redis)(nil)
