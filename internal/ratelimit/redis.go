package ratelimit

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-mta/sluice/pipeline"
)

// gcraScript decides the GCRA checks of one or more calls: each call's
// checks all or nothing, the calls one after the other in order (a call
// sees what the calls before it charged). KEYS holds every call's keys in
// order; ARGV holds, per call, its number of checks k and then four
// numbers per check: emission interval and tolerance in microseconds,
// the cost n and the most to charge m ≥ n (the lease, see lease.go). A
// check is allowed when n events fit, and then charges as many as fit,
// up to m: with m = n it is plain GCRA. The clock is the server's (TIME),
// so every node agrees; all the calls of one script run see the same
// instant. It returns three integers per key: 1, the remaining count
// and the events charged when allowed; 0, the retry-after in microseconds
// (-1: never) and 0 when not. A call's keys are charged only when every
// check of that call is allowed, and expire when their TAT passes (they
// are then the same as absent). The keys are read with one MGET (a value
// that is not a number counts as absent) and each key charged is written
// once, at the end, with its last TAT: a SET costs the server about
// 2 µs, and the calls of a batch often share keys (a busy recipient
// domain, a tenant). TATs are written with %d: tostring of a number near
// 1.7e15 would give "1.7e+15" in Lua 5.1.
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
    local j = a + 4 * (i - first)
    local e, tol, n, m = tonumber(ARGV[j+1]), tonumber(ARGV[j+2]), tonumber(ARGV[j+3]), tonumber(ARGV[j+4])
    local tat = charged[KEYS[i]] or tonumber(vals[i]) or now
    if tat < now then tat = now end
    local g = math.floor((tol - (tat - now)) / e)
    if g > m then g = m end
    if g < n then
      ok = false
      res[3*i-2], res[3*i] = 0, 0
      if n * e > tol then res[3*i-1] = -1 else res[3*i-1] = tat + n * e - now - tol end
    else
      local nxt = tat + g * e
      res[3*i-2], res[3*i-1], res[3*i] = 1, math.floor((tol - (nxt - now)) / e), g
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
  a, first = a + 1 + 4 * k, last + 1
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
// Checks share one), and none when the node holds a lease for every key
// of the Check. Keys are Prefix + "rl:" + the check's key. Safe for
// concurrent use.
//
// Leases (lease.go): a key whose rate allows 40 events a second or
// more is charged in Redis for up to leaseSize events at once, and the
// node spends the rest locally for up to LeaseTTL. A Check whose keys
// all have enough leased is answered at once, all or nothing; otherwise
// its keys that have are taken locally and the others go to Redis in one
// call (the taken ones go back when Redis refuses or fails). With Redis
// down, what is leased is still spent; then Checks fail as without
// leases. pipeline.Redis.RateLease 1 turns leasing off.
//
// Calls from concurrent sessions are coalesced (group commit): while one
// batch is in flight, the calls that arrive wait and then go together as
// one EVALSHA, one write and one read for all of them, each call still
// all or nothing. A lone call goes at once. Before a batch is sent, each
// waiting call is tried against the leases again (the batch before may
// have brought them): those answered so are not sent. A batch is bounded
// by sluice.redis's timeout, so a call waits at most for the batch in
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
	r     *pipeline.Redis
	lease int // the most events to lease per key (pipeline.Redis.RateLease): 1 for none

	mu      sync.Mutex
	runners int     // batches in flight, or callers and loops about to send one: at most maxRunners
	pending []*call // calls waiting for the next batch

	lmu       sync.Mutex        // after mu when both are held
	leases    map[string]*lease // by Redis key
	sweepAt   int               // len(leases) at which settle drops expired leases
	fullSweep int64             // when hold may sweep a full map next
	now       func() int64      // the node's clock for leases, in ns; tests move it
	// leasedEvents and lostEvents count the events leased beyond the
	// checks' costs and those that expired unspent
	// (sluice_ratelimit_lease_events_total); nil: not counted.
	leasedEvents, lostEvents prometheus.Counter
}

// call is one Check. res and err are written by the goroutine that runs
// its batch before it signals done; a caller that stopped waiting never
// reads them.
type call struct {
	ctx     context.Context
	items   []item
	leasing bool    // an item may be held from a lease
	inline  bool    // the caller may run a batch itself (Redis.inline)
	res     []int64 // three integers per item sent (not held), in order
	err     error
	// done (buffered, 1) is signalled once the result is in, or when
	// the caller is handed the next batch to run (lead, set under mu
	// first); signals never block. nil for a caller that ran its call
	// itself from the start.
	done chan struct{}
	lead bool // under mu: the waiting caller is to run the next batch
	gone bool // under mu: the caller stopped waiting (ctx ended)
}

// item is one check of a call.
type item struct {
	key       string // the Redis key
	e, tol, n int64  // emission interval and tolerance (µs), cost
	lease     int64  // the most events to charge Redis for: n, or the key's lease when larger (hold may lower it)
	most      int64  // the key's largest lease: lease before hold lowered it
	held      bool   // taken from the node's lease (not sent); set before the call is sent
	remaining int64  // when held: the Remaining to report
}

// NewRedis returns a store on r (which must not be nil), leasing up to
// r.RateLease events per key (0: DefaultLease).
func NewRedis(r *pipeline.Redis) *Redis {
	s := &Redis{r: r, lease: r.RateLease, leases: map[string]*lease{}, sweepAt: minSweep}
	if s.lease <= 0 {
		s.lease = DefaultLease
	}
	start := time.Now()
	s.now = func() int64 { return int64(time.Since(start)) }
	return s
}

// Check implements pipeline.RateStore. An error (Redis unreachable, a
// timeout, ctx ending first) leaves out undefined.
func (s *Redis) Check(ctx context.Context, checks []pipeline.RateCheck, out []pipeline.RateResult) error {
	if len(checks) == 0 {
		return nil
	}
	c := s.newCall(ctx, checks)
	if !c.leasing || !s.hold(c) {
		if err := s.do(ctx, c); err != nil {
			return err
		}
	}
	c.results(out[:len(checks)])
	return nil
}

// newCall is the call of checks.
func (s *Redis) newCall(ctx context.Context, checks []pipeline.RateCheck) *call {
	c := &call{ctx: ctx, items: make([]item, len(checks))}
	for i := range checks {
		ck := &checks[i]
		e, tol := gcra(ck.Rate, 1000)
		n := cost(ck)
		l := n
		if s.lease > 1 {
			l = max(n, leaseSize(ck.Rate, s.lease))
		}
		c.items[i] = item{key: s.r.Prefix + "rl:" + ck.Key, e: e, tol: tol, n: n, lease: l, most: l}
		c.leasing = c.leasing || l > n
	}
	return c
}

// unsent is the number of c's checks that are not held.
func (c *call) unsent() int {
	n := 0
	for i := range c.items {
		if !c.items[i].held {
			n++
		}
	}
	return n
}

// results decodes a call's outcome into out: held checks are allowed,
// the others have their part of the script's reply (three integers
// each, exec checked the count).
func (c *call) results(out []pipeline.RateResult) {
	j := 0
	for i := range c.items {
		it := &c.items[i]
		if it.held {
			out[i] = pipeline.RateResult{Allowed: true, Remaining: int(it.remaining)}
			continue
		}
		r := c.res[3*j : 3*j+3]
		j++
		if r[0] == 1 {
			// What Redis still allows and what the node keeps leased.
			out[i] = pipeline.RateResult{Allowed: true, Remaining: int(r[1] + r[2] - it.n)}
			continue
		}
		ra := time.Duration(r[1]) * time.Microsecond
		if r[1] < 0 {
			ra = -1
		}
		out[i] = pipeline.RateResult{RetryAfter: ra}
	}
}

// do sends c, or queues it for the next batch, and waits for its result
// (in c) or for ctx to end.
//
// A caller whose ctx has no deadline before sluice.redis's timeout runs
// a batch on its own goroutine (no goroutine switch: about half the
// client CPU of a call): at once when none is in flight, or, when it
// waits behind one, the batch the previous runner hands it. It then
// returns when its round trip ends, at most that timeout after ctx is
// cancelled (a client gone). A caller with an earlier deadline (a Lua
// hook's) never runs a batch: it waits, on a batch goroutine when no
// caller can run its call, and stops waiting at its deadline.
func (s *Redis) do(ctx context.Context, c *call) error {
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
		return c.err
	case <-ctx.Done():
		s.mu.Lock()
		if c.lead {
			// Handed the next batch as ctx ended: a batch goroutine
			// runs the pending calls instead (this one is not sent,
			// and what it held goes back).
			s.release(c)
			go s.loop()
		}
		c.gone = true
		s.mu.Unlock()
		return ctx.Err()
	}
}

// lead runs a batch on the caller's goroutine, c (not queued, and not
// sent when the leases now hold all its checks) and the calls pending,
// then hands what is pending to the next runner.
func (s *Redis) lead(c *call) error {
	s.mu.Lock()
	batch := make([]*call, 0, 1+len(s.pending))
	if !c.leasing || !s.hold(c) {
		batch = append(batch, c)
	}
	batch = s.take(batch)
	s.mu.Unlock()
	s.run(batch)
	s.mu.Lock()
	s.next()
	s.mu.Unlock()
	if c.err != nil && c.ctx.Err() != nil {
		return c.ctx.Err()
	}
	return c.err
}

// take moves pending calls to batch, in order, while the batch holds at
// most maxBatchKeys keys to send (at least one call). A pending call
// whose checks the leases now hold is answered at once instead. s.mu is
// held.
func (s *Redis) take(batch []*call) []*call {
	keys := 0
	for _, c := range batch {
		keys += c.unsent()
	}
	n := 0
	for _, p := range s.pending {
		if p.leasing && p.ctx.Err() == nil && s.hold(p) {
			signal(p) // answered from the leases: not sent
			n++
			continue
		}
		k := p.unsent()
		if len(batch) > 0 && keys+k > maxBatchKeys {
			break
		}
		batch = append(batch, p)
		keys += k
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
		batch := s.take(nil)
		if len(batch) == 0 { // (take leaves none pending then)
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
			s.settle(c)
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
// restarted or flushed its scripts) of the checks not held, gives each
// call its part of the reply, or the error, and settles the leases
// (settle). A key is leased once per batch, by its last check in the
// batch: the checks before it ask for their costs only and are charged
// first, so a lease that takes all the room left never refuses another
// check of the same batch.
func (s *Redis) exec(ctx context.Context, batch []*call) {
	nk := 0
	for _, c := range batch {
		nk += c.unsent()
	}
	// most[j] is what the j-th check sent may be charged, decided from
	// the last check back.
	most := make([]int64, nk)
	var asked []string // keys whose lease a later check of the batch asks for
	for ci, j := len(batch)-1, nk-1; ci >= 0; ci-- {
		c := batch[ci]
		for i := len(c.items) - 1; i >= 0; i-- {
			it := &c.items[i]
			if it.held {
				continue
			}
			most[j] = it.lease
			if it.lease > it.n {
				if slices.Contains(asked, it.key) {
					most[j] = it.n
				} else {
					asked = append(asked, it.key)
				}
			}
			j--
		}
	}
	keys, args := make([]string, 0, nk), make([]any, 0, len(batch)+4*nk)
	for _, c := range batch {
		args = append(args, c.unsent())
		for i := range c.items {
			it := &c.items[i]
			if it.held {
				continue
			}
			args = append(args, it.e, it.tol, it.n, most[len(keys)])
			keys = append(keys, it.key)
		}
	}
	var res []int64
	var err error
	if nk > 0 {
		res, err = script.Run(ctx, s.r.Client, keys, args...).Int64Slice()
		if err == nil && len(res) != 3*nk {
			err = fmt.Errorf("ratelimit: redis script returned %d values for %d checks", len(res), nk)
		}
	}
	for _, c := range batch {
		if err != nil {
			c.err = err
		} else if k := 3 * c.unsent(); k > 0 {
			c.res, res = res[:k:k], res[k:]
		}
		s.settle(c)
	}
}

var _ pipeline.RateStore = (*Redis)(nil)
