package luahost

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

type ctxKey struct{}

// A call that ends in time leaves the context unfired and reusable, with
// the caller's values and the earlier of the two deadlines.
func TestCallCtxReusedAcrossCalls(t *testing.T) {
	c := newCallCtx()
	defer c.stop()
	parent, cancel := context.WithCancel(context.WithValue(bg, ctxKey{}, "v"))
	defer cancel()
	for i := 0; i < 100; i++ {
		ctx := c.arm(parent, time.Hour)
		if ctx.Value(ctxKey{}) != "v" {
			t.Fatalf("call %d: Value = %v", i, ctx.Value(ctxKey{}))
		}
		if dl, ok := ctx.Deadline(); !ok || time.Until(dl) < 59*time.Minute {
			t.Fatalf("call %d: deadline %v %v", i, dl, ok)
		}
		if err := ctx.Err(); err != nil {
			t.Fatalf("call %d: Err = %v", i, err)
		}
		if err := c.end(); err != nil {
			t.Fatalf("call %d: end = %v", i, err)
		}
	}
	select {
	case <-c.Done():
		t.Fatal("Done closed after calls that ended in time")
	default:
	}
	if c.parent.Value(ctxKey{}) != nil {
		t.Fatal("the last caller's context is kept between calls")
	}
	short, cancel2 := context.WithTimeout(bg, time.Minute)
	defer cancel2()
	want, _ := short.Deadline()
	if dl, _ := c.arm(short, time.Hour).Deadline(); !dl.Equal(want) {
		t.Fatalf("deadline %v, want the caller's %v", dl, want)
	}
	if err := c.end(); err != nil {
		t.Fatal(err)
	}
}

func TestCallCtxDeadline(t *testing.T) {
	c := newCallCtx()
	defer c.stop()
	ctx := c.arm(bg, time.Nanosecond)
	<-ctx.Done()
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatalf("Err = %v", ctx.Err())
	}
	if err := c.end(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("end = %v", err)
	}
}

// The caller's cancellation ends the call's context, and a child made
// from it (context.WithTimeout in a builtin) with it.
func TestCallCtxCallerCancelledAndChildren(t *testing.T) {
	c := newCallCtx()
	defer c.stop()
	parent, cancel := context.WithCancel(bg)
	ctx := c.arm(parent, time.Hour)
	child, cancelChild := context.WithTimeout(ctx, time.Hour)
	defer cancelChild()
	done, cancelDone := context.WithCancel(ctx)
	cancelDone() // a child cancelled first is unregistered
	c.mu.Lock()
	n := len(c.afters)
	c.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d child registrations, want 1", n)
	}
	_ = done
	cancel()
	<-ctx.Done()
	<-child.Done()
	if !errors.Is(ctx.Err(), context.Canceled) || !errors.Is(child.Err(), context.Canceled) {
		t.Fatalf("Err = %v, child %v", ctx.Err(), child.Err())
	}
	if err := c.end(); !errors.Is(err, context.Canceled) {
		t.Fatalf("end = %v", err)
	}
	// A child made after the end is done at once.
	late, cancelLate := context.WithCancel(ctx)
	defer cancelLate()
	<-late.Done()
}

// armedCtx signals when the hook call has armed its context (it asks for
// the caller's deadline).
type armedCtx struct {
	context.Context
	once  sync.Once
	armed chan struct{}
}

func (a *armedCtx) Deadline() (time.Time, bool) {
	a.once.Do(func() { close(a.armed) })
	return a.Context.Deadline()
}

// A caller that goes away while a hook runs stops it (context.Canceled,
// not the Lua timeout's DeadlineExceeded), and the state is discarded.
func TestCallerCancelledDuringCall(t *testing.T) {
	h, stages, _ := setup(t, map[string]string{"pipeline.lua": `
sluice.lua_options { timeout = "5s" }
sluice.stage("s", { on_rcpt = function() while true do end end })`})
	inner, cancel := context.WithCancel(bg)
	defer cancel()
	ctx := &armedCtx{Context: inner, armed: make(chan struct{})}
	go func() {
		<-ctx.armed
		cancel()
	}()
	_, err := rcptHook(t, stages["s"]).OnRcpt(ctx, testTxn(), rcpt(t, "a@example.org"))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if h.Stats().Discarded != 1 {
		t.Fatalf("stopped state not discarded: %+v", h.Stats())
	}
}

// A hook call that runs across several of the timer's looks at the
// caller's context (watchEvery) and ends in time succeeds, and its state
// goes back to the pool.
func TestLongCallWithinTimeout(t *testing.T) {
	h, stages, _ := setup(t, map[string]string{"pipeline.lua": `
sluice.lua_options { timeout = "30s" }
sluice.stage("s", { on_rcpt = function()
  local n = 0
  for i = 1, 300000 do n = n + i end
  return sluice.accept()
end })`})
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	for i := 0; i < 3; i++ {
		v, err := rcptHook(t, stages["s"]).OnRcpt(ctx, testTxn(), rcpt(t, "a@example.org"))
		if err != nil || v.Action != pipeline.Accept {
			t.Fatalf("call %d: %+v, %v", i, v, err)
		}
	}
	if s := h.Stats(); s.Discarded != 0 {
		t.Fatalf("states discarded after calls that ended in time: %+v", s)
	}
}
