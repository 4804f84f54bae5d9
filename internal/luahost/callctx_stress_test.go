package luahost

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

// Review of issue 21's per-state call context: many callers share a small
// pool of states, mixing quick calls, calls that take several of the
// timer's looks (watchEvery), runaway scripts that only the Lua timeout
// ends, and callers that go away mid-call. A quick call under a live
// caller never fails (a reused state's earlier timer, firing late, must not
// cancel the next call early; one starved of CPU past the whole timeout
// may fail by it), a runaway always ends with the timeout, and a
// cancelled caller's runaway with context.Canceled. Run it with -race.
func TestCallCtxMixedCallsSharePool(t *testing.T) {
	h, stages, _ := setup(t, map[string]string{"pipeline.lua": `
sluice.lua_options { timeout = "150ms" }
sluice.stage("s", { on_rcpt = function(txn, rcpt)
  local mode = rcpt.local_part
  if mode == "loop" then while true do end end
  if mode == "slow" then
    local n = 0
    for i = 1, 200000 do n = n + i end
  end
  return sluice.accept()
end })`})
	hook := rcptHook(t, stages["s"])
	const timeout = 150 * time.Millisecond
	const workers, rounds = 8, 12
	var wg sync.WaitGroup
	var late atomic.Int64 // calls that ran out of time, CPU-starved
	errs := make(chan error, workers*rounds*50)
	// inTime makes a call that should succeed: it fails only by its own
	// deadline, after the whole timeout (an earlier call's timer firing
	// late would fail it early). It reports whether the call succeeded.
	inTime := func(hook pipeline.RcptHook, addr string) bool {
		start := time.Now()
		v, err := hook.OnRcpt(bg, testTxn(), rcpt(t, addr))
		if err == nil && v.Action == pipeline.Accept {
			return true
		}
		if took := time.Since(start); !errors.Is(err, context.DeadlineExceeded) || took < timeout {
			errs <- fmt.Errorf("%s: failed after %s (timeout %s): %v, %v", addr, took, timeout, v.Action, err)
		}
		return false
	}
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				switch (w + i) % 6 {
				case 0: // runaway, live caller: the timeout ends it
					_, err := hook.OnRcpt(bg, testTxn(), rcpt(t, "loop@example.org"))
					if !errors.Is(err, context.DeadlineExceeded) {
						errs <- fmt.Errorf("worker %d round %d: runaway: err = %v, want DeadlineExceeded", w, i, err)
					}
				case 1: // runaway, caller goes away once it runs
					inner, cancel := context.WithCancel(bg)
					ctx := &armedCtx{Context: inner, armed: make(chan struct{})}
					go func() { <-ctx.armed; cancel() }()
					_, err := hook.OnRcpt(ctx, testTxn(), rcpt(t, "loop@example.org"))
					cancel()
					if !errors.Is(err, context.Canceled) {
						errs <- fmt.Errorf("worker %d round %d: cancelled runaway: err = %v, want Canceled", w, i, err)
					}
				case 2, 3: // slow but in time, unless starved of CPU
					if !inTime(hook, "slow@example.org") {
						late.Add(1)
					}
				default: // quick
					for range 50 {
						if !inTime(hook, "quick@example.org") {
							late.Add(1)
						}
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Each runaway discarded its state; nothing else did.
	runaways := 0
	for w := range workers {
		for i := range rounds {
			if (w+i)%6 <= 1 {
				runaways++
			}
		}
	}
	if d, want := h.Stats().Discarded, int64(runaways)+late.Load(); d != want {
		t.Errorf("%d states discarded, want %d (one per runaway and per call out of time)", d, want)
	}
	t.Logf("%d runaways, %d calls starved past the timeout", runaways, late.Load())
}
