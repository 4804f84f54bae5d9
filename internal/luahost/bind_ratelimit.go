package luahost

import (
	"context"
	"strconv"
	"time"

	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/internal/luahost/sandbox"
	rl "github.com/sluice-mta/sluice/internal/ratelimit"
	"github.com/sluice-mta/sluice/pipeline"
)

// maxRateKey bounds a key given to sluice.ratelimit.check: the store
// holds one entry per key.
const maxRateKey = 256

// SetRateLimits gives the host's Lua states the node's rate-limit stores
// for sluice.ratelimit.check. Call it before the stages serve; without
// it, sluice.ratelimit.check returns nil and an error message.
func (h *Host) SetRateLimits(l *pipeline.RateLimits) { h.limits.Store(l) }

// checkContext bounds one store call to three quarters of the time the
// hook has left, so that when Redis is slow or down the script still has
// time to act on nil, message (fail open or closed) before its own
// deadline stops it with 451 4.4.5.
func checkContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx == nil { // a state outside a call
		return context.Background(), func() {}
	}
	dl, ok := ctx.Deadline()
	if !ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, time.Until(dl)*3/4)
}

// installRateLimit adds sluice.ratelimit to a state's module.
func (h *Host) installRateLimit(st *state) {
	L := st.L
	t := L.NewTable()
	t.RawSetString("check", L.NewFunction(func(L *lua.LState) int { return h.rateCheck(st, L) }))
	st.sb.Strict(t, "sluice.ratelimit")
	st.sb.Module.RawSetString("ratelimit", t)
}

// sluice.ratelimit.check(key, rate [, { burst = n, count = n, store = "memory"|"redis" }])
//
// returns true, 0 when allowed; false, seconds until allowed when not
// (-1: never, count is larger than the burst); nil, message when the
// store cannot answer.
func (h *Host) rateCheck(st *state, L *lua.LState) int {
	const fn = "sluice.ratelimit.check"
	key, ok := L.Get(1).(lua.LString)
	if !ok || len(key) == 0 || len(key) > maxRateKey {
		st.sb.Raise("%s: key must be a string of 1 to %d bytes, got %s", fn, maxRateKey, sandbox.Describe(L.Get(1)))
	}
	rs, ok := L.Get(2).(lua.LString)
	if !ok {
		st.sb.Raise("%s: rate must be a string like \"100/minute\", got %s", fn, sandbox.Describe(L.Get(2)))
	}
	rate, err := rl.ParseRate(string(rs))
	if err != nil {
		st.sb.Raise("%s: %v", fn, err)
	}
	o := st.sb.OptOpts(3, fn, "burst", "count", "store")
	n := 1
	if o.Int("burst", &rate.Burst) && (rate.Burst < 1 || rate.Burst > rl.MaxLimit) {
		o.Fail("burst", "must be from 1 to %d", rl.MaxLimit)
	}
	if o.Int("count", &n) && (n < 1 || n > rl.MaxLimit) {
		o.Fail("count", "must be from 1 to %d", rl.MaxLimit)
	}
	limits := h.limits.Load()
	if limits == nil {
		L.Push(lua.LNil)
		L.Push(lua.LString(fn + ": no rate-limit store in this process"))
		return 2
	}
	store := limits.Default()
	var name string
	if o.String("store", &name) {
		switch name {
		case "memory":
			store = limits.Memory
		case "redis":
			if limits.Redis == nil {
				o.Fail("store", "\"redis\" needs sluice.redis { addr = ... } in the configuration")
			}
			store = limits.Redis
		default:
			o.Fail("store", "want \"memory\" or \"redis\", got %q", name)
		}
	}
	checks := [1]pipeline.RateCheck{{
		Key:  "lua/" + strconv.Itoa(rate.Limit) + "/" + rate.Period.String() + "/" + strconv.Itoa(rate.EffectiveBurst()) + ":" + string(key),
		Rate: rate, N: n, Stage: st.stage, Limit: fn,
	}}
	var out [1]pipeline.RateResult
	ctx, cancel := checkContext(L.Context())
	err = store.Check(ctx, checks[:], out[:])
	cancel()
	if err != nil {
		L.Push(lua.LNil)
		L.Push(lua.LString(fn + ": the rate-limit store cannot answer: " + err.Error()))
		return 2
	}
	r := out[0]
	L.Push(lua.LBool(r.Allowed))
	switch {
	case r.Allowed:
		L.Push(lua.LNumber(0))
	case r.RetryAfter < 0:
		L.Push(lua.LNumber(-1))
	default:
		L.Push(lua.LNumber(float64(r.RetryAfter) / float64(time.Second)))
	}
	return 2
}
