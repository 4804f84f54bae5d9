package ratelimit

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-mta/sluice/pipeline"
)

// gcraScript decides the GCRA checks of one or more calls: each call's
// checks all or nothing, the calls one after the other in order (a call
// sees what the calls before it charged). KEYS holds every call's keys in
// order; ARGV holds, per call, its number of checks k and then three
// numbers per check: emission interval and tolerance in microseconds,
// and the cost. The clock is the server's (TIME), so every node agrees;
// all the calls of one script run see the same instant. It returns two
// integers per key: 1 and the remaining count when allowed, 0 and the
// retry-after in microseconds (-1: never) when not. A call's keys are
// charged only when every check of that call is allowed, and expire when
// their TAT passes (they are then the same as absent). The keys are read
// with one MGET (a value that is not a number counts as absent) and each
// key charged is written once, at the end, with its last TAT: a SET costs
// the server about 2 µs, and the calls of a batch often share keys (a
// busy recipient domain, a tenant). TATs are written with %d: tostring
// of a number near 1.7e15 would give "1.7e+15" in Lua 5.1.
const gcraScript = `
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local vals = redis.call("MGET", unpack(KEYS))
local res, charged, order, tats = {}, {}, {}, {}
local a, first = 1, 1
while a <= #ARGV do
  local k = tonumber(ARGV[a])
  local last, ok = first + k - 1, true
  for i = first, last do
    local j = a + 3 * (i - first)
    local e, tol, n = tonumber(ARGV[j+1]), tonumber(ARGV[j+2]), tonumber(ARGV[j+3])
    local tat = charged[KEYS[i]] or tonumber(vals[i]) or now
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
    for i = first, last do
      local key = KEYS[i]
      if charged[key] == nil then order[#order+1] = key end
      charged[key] = tats[i]
    end
  end
  a, first = a + 1 + 3 * k, last + 1
end
for _, key in ipairs(order) do
  local tat = charged[key]
  redis.call("SET", key, string.format("%d", tat), "PX", math.floor((tat - now) / 1000) + 1)
end
return res
`

var script = redis.NewScript(gcraScript)

// maxRunners is the number of batches in flight at once: a call that
// finds fewer goes at once, the others wait and go together. Two cost
// as much CPU per message as one in the SMTP benchmark, with 40% more
// round trips and no lower latency (BENCHMARKS.md, issue 18).
const maxRunners = 1

// maxBatchKeys bounds the keys of one script run (the calls waiting
// beyond it go in the next): MGET takes them as Lua arguments, and one
// run blocks the Redis server while it lasts.
const maxBatchKeys = 256

// Redis is a pipeline.RateStore on the node's Redis (sluice.redis): at
// most one EVALSHA per Check whatever the number of checks (concurrent
// Checks share one). Keys are Prefix + "rl:" + the check's key. Safe for
// concurrent use.
//
// Calls from concurrent sessions are coalesced (group commit): while one
// batch is in flight, the calls that arrive wait and then go together as
// one EVALSHA, one write and one read for all of them, each call still
// all or nothing. A lone call goes at once. A batch is bounded by
// sluice.redis's timeout, so a call waits at most for the batch in
// flight and its own (and, when more than maxBatchKeys keys wait, the
// batches queued before it); a caller whose deadline comes first stops waiting
// then (and its call is dropped if its batch has not been sent yet), so
// a Lua hook's deadline is kept. A caller with no such deadline runs its
// batch on its own goroutine (see do): a cancelled caller then returns
// when its round trip ends.
//
// Redis Cluster is not supported: the keys of one Check would have to
// share a hash slot.
type Redis struct {
	r *pipeline.Redis

	mu      sync.Mutex
	runners int     // batches in flight, or callers and loops about to send one: at most maxRunners
	pending []*call // calls waiting for the next batch
}

// call is one Check. res and err are written by the goroutine that runs
// its batch before it signals done; a caller that stopped waiting never
// reads them.
type call struct {
	ctx    context.Context
	keys   []string
	args   []any // the script's ARGV for this call: len(keys), then e, tol, n per check
	inline bool  // the caller may run a batch itself (Redis.inline)
	res    []int64
	err    error
	// done (buffered, 1) is signalled once the result is in, or when
	// the caller is handed the next batch to run (lead, set under mu
	// first); signals never block. nil for a caller that ran its call
	// itself from the start.
	done chan struct{}
	lead bool // under mu: the waiting caller is to run the next batch
	gone bool // under mu: the caller stopped waiting (ctx ended)
}

// NewRedis returns a store on r (which must not be nil).
func NewRedis(r *pipeline.Redis) *Redis { return &Redis{r: r} }

// Check implements pipeline.RateStore. An error (Redis unreachable, a
// timeout, ctx ending first) leaves out undefined.
func (s *Redis) Check(ctx context.Context, checks []pipeline.RateCheck, out []pipeline.RateResult) error {
	if len(checks) == 0 {
		return nil
	}
	res, err := s.do(ctx, s.newCall(ctx, checks))
	if err != nil {
		return err
	}
	results(res, out[:len(checks)])
	return nil
}

// newCall is the call of checks.
func (s *Redis) newCall(ctx context.Context, checks []pipeline.RateCheck) *call {
	c := &call{ctx: ctx, keys: make([]string, len(checks)), args: make([]any, 1, 1+3*len(checks))}
	c.args[0] = len(checks)
	for i := range checks {
		ck := &checks[i]
		c.keys[i] = s.r.Prefix + "rl:" + ck.Key
		e, tol := gcra(ck.Rate, 1000)
		c.args = append(c.args, e, tol, cost(ck))
	}
	return c
}

// results decodes a call's part of the script's reply (two integers per
// check, exec checked the count) into out.
func results(res []int64, out []pipeline.RateResult) {
	for i := range out {
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
}

// do sends c, or queues it for the next batch, and waits for its result
// or for ctx to end.
//
// A caller whose ctx has no deadline before sluice.redis's timeout runs
// a batch on its own goroutine (no goroutine switch: about half the
// client CPU of a call): at once when none is in flight, or, when it
// waits behind one, the batch the previous runner hands it. It then
// returns when its round trip ends, at most that timeout after ctx is
// cancelled (a client gone). A caller with an earlier deadline (a Lua
// hook's) never runs a batch: it waits, on a batch goroutine when no
// caller can run its call, and stops waiting at its deadline.
func (s *Redis) do(ctx context.Context, c *call) ([]int64, error) {
	c.inline = s.inline(ctx)
	s.mu.Lock()
	if s.runners < maxRunners && c.inline {
		s.runners++
		s.mu.Unlock()
		return s.lead(c)
	}
	c.done = make(chan struct{}, 1)
	s.pending = append(s.pending, c)
	if s.runners == 0 {
		s.runners++
		go s.loop()
	}
	s.mu.Unlock()
	select {
	case <-c.done:
		if c.lead { // written before the signal
			return s.lead(c)
		}
		return c.res, c.err
	case <-ctx.Done():
		s.mu.Lock()
		if c.lead {
			// Handed the next batch as ctx ended: a batch goroutine
			// runs the pending calls instead (this one is not sent).
			go s.loop()
		}
		c.gone = true
		s.mu.Unlock()
		return nil, ctx.Err()
	}
}

// lead runs a batch on the caller's goroutine, c (not queued) and the
// calls pending, then hands what is pending to the next runner.
func (s *Redis) lead(c *call) ([]int64, error) {
	s.mu.Lock()
	batch := s.take(append(make([]*call, 0, 1+len(s.pending)), c), len(c.keys))
	s.mu.Unlock()
	s.run(batch)
	s.mu.Lock()
	s.next()
	s.mu.Unlock()
	if c.err != nil && c.ctx.Err() != nil {
		return nil, c.ctx.Err()
	}
	return c.res, c.err
}

// take moves pending calls to batch, in order, while the batch holds at
// most maxBatchKeys keys (at least one call). s.mu is held.
func (s *Redis) take(batch []*call, keys int) []*call {
	n := 0
	for _, p := range s.pending {
		if len(batch) > 0 && keys+len(p.keys) > maxBatchKeys {
			break
		}
		batch = append(batch, p)
		keys += len(p.keys)
		n++
	}
	rest := copy(s.pending, s.pending[n:])
	clear(s.pending[rest:])
	s.pending = s.pending[:rest]
	return batch
}

// next hands the pending calls to a runner, or ends this runner's turn
// when none is pending. The runner is the first waiting caller that may
// run a batch (taken out of the queue: it sends its call with the
// others, see lead), else a batch goroutine. s.mu is held.
func (s *Redis) next() {
	if len(s.pending) == 0 {
		s.runners--
		return
	}
	for i, p := range s.pending {
		if p.inline && !p.gone {
			s.pending = slices.Delete(s.pending, i, i+1) // clears the freed slot
			p.lead = true
			signal(p)
			return
		}
	}
	go s.loop()
}

// signal wakes c's caller, if it waits.
func signal(c *call) {
	if c.done == nil {
		return
	}
	select {
	case c.done <- struct{}{}:
	default:
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
		batch := s.take(nil, 0)
		if len(batch) == 0 {
			s.runners--
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		s.run(batch)
	}
}

// run sends the calls of batch whose callers still wait, bounded by
// sluice.redis's timeout, and signals every call's caller.
func (s *Redis) run(batch []*call) {
	live := batch[:0] // filtered in place
	for _, c := range batch {
		if err := c.ctx.Err(); err != nil {
			c.err = err // its caller has gone: not sent, not charged
			signal(c)
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
		signal(c)
	}
}

// exec runs a batch as one EVALSHA (EVAL after a NOSCRIPT: the server
// restarted or flushed its scripts) and gives each call its part of the
// reply, or the error.
func (s *Redis) exec(ctx context.Context, batch []*call) {
	keys, args := batch[0].keys, batch[0].args
	if len(batch) > 1 {
		nk := 0
		for _, c := range batch {
			nk += len(c.keys)
		}
		keys, args = make([]string, 0, nk), make([]any, 0, len(batch)+3*nk)
		for _, c := range batch {
			keys = append(keys, c.keys...)
			args = append(args, c.args...)
		}
	}
	res, err := script.Run(ctx, s.r.Client, keys, args...).Int64Slice()
	if err == nil && len(res) != 2*len(keys) {
		err = fmt.Errorf("ratelimit: redis script returned %d values for %d checks", len(res), len(keys))
	}
	for _, c := range batch {
		if err != nil {
			c.err = err
			continue
		}
		c.res, res = res[:2*len(c.keys):2*len(c.keys)], res[2*len(c.keys):]
	}
}

var _ pipeline.RateStore = (*Redis)(nil)
