package luahost

import (
	"context"
	"errors"
	"testing"

	rl "github.com/sluice-mta/sluice/internal/ratelimit"
	_ "github.com/sluice-mta/sluice/internal/stages/ratelimit" // examples/ratelimit uses sluice.builtin.ratelimit
	"github.com/sluice-mta/sluice/pipeline"
)

// failingStore is a store that cannot answer (Redis down), for the
// nil, message return.
type failingStore struct{}

func (failingStore) Check(context.Context, []pipeline.RateCheck, []pipeline.RateResult) error {
	return errors.New("connection refused")
}

// TestRateLimitCheck: sluice.ratelimit.check returns true, 0 within the
// rate, false and the seconds to wait past it, false, -1 for a count over
// the burst, nil and a message when the store fails; bad arguments are
// script errors naming the argument.
func TestRateLimitCheck(t *testing.T) {
	st, h, _ := inline(t, `on_rcpt = function(txn, rcpt)
  local mode = rcpt.local_part
  local ok, v
  if mode == "two" then ok, v = sluice.ratelimit.check("k", "2/minute")
  elseif mode == "big" then ok, v = sluice.ratelimit.check("k2", "2/minute", { count = 3 })
  elseif mode == "burst" then ok, v = sluice.ratelimit.check("k3", "2/minute", { burst = 1 })
  elseif mode == "redis" then ok, v = sluice.ratelimit.check("k", "2/minute", { store = "redis" })
  elseif mode == "badrate" then ok, v = sluice.ratelimit.check("k", "2 per minute")
  elseif mode == "badkey" then ok, v = sluice.ratelimit.check("", "2/minute")
  elseif mode == "badopt" then ok, v = sluice.ratelimit.check("k", "2/minute", { colour = 1 })
  end
  if type(v) == "number" then v = math.ceil(v) end
  return sluice.reject(550, "5.0.0", tostring(ok) .. " " .. tostring(v))
end`)
	hook := rcptHook(t, st)
	call := func(mode string) (string, error) {
		t.Helper()
		v, err := hook.OnRcpt(bg, testTxn(), rcpt(t, mode+"@example.org"))
		return v.Text, err
	}
	if got, _ := call("two"); got != "nil "+"sluice.ratelimit.check: no rate-limit store in this process" {
		t.Fatalf("without a store: %q", got)
	}
	h.SetRateLimits(&pipeline.RateLimits{Memory: rl.NewMemory(), Redis: failingStore{}})
	if got, _ := call("redis"); got != "nil sluice.ratelimit.check: the rate-limit store cannot answer: connection refused" {
		t.Fatalf("store down: %q", got)
	}
	h.SetRateLimits(&pipeline.RateLimits{Memory: rl.NewMemory()})
	for i, want := range []string{"true 0", "true 0", "false 30"} {
		if got, err := call("two"); err != nil || got != want {
			t.Fatalf("check %d: %q %v, want %q", i+1, got, err, want)
		}
	}
	if got, _ := call("big"); got != "false -1" {
		t.Errorf("count over burst: %q", got)
	}
	if got, _ := call("burst"); got != "true 0" {
		t.Errorf("burst 1, first: %q", got)
	}
	if got, _ := call("burst"); got != "false 30" {
		t.Errorf("burst 1, second: %q", got)
	}
	for mode, want := range map[string]string{
		"redis":   `key "store": "redis" needs sluice.redis`,
		"badrate": `sluice.ratelimit.check: rate "2 per minute"`,
		"badkey":  `key must be a string of 1 to 256 bytes`,
		"badopt":  `colour`,
	} {
		_, err := call(mode)
		wantErrContains(t, err, want)
	}
}
