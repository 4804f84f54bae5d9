package sdk

import (
	"context"
	"sync"
	"time"
)

// callCtx is the context of one call on the Calls stream: its deadline,
// its cancellation by Sluice (a cancel request) and the end of the stream
// (base). context.WithDeadline would arm a timer for every call, about a
// tenth of a small plugin's CPU per call; most hooks never wait on Done,
// so callCtx arms its timer (and its watch on base) only when Done is
// first called. Err, Deadline and Value need neither. Safe for
// concurrent use.
type callCtx struct {
	base     context.Context
	deadline time.Time // zero: none

	mu      sync.Mutex
	done    chan struct{} // nil until Done is called
	err     error         // set when cancelled, or when done closes
	timer   *time.Timer
	unwatch func() bool // stops the watch on base
}

var _ context.Context = (*callCtx)(nil)

func newCallCtx(base context.Context, deadline time.Time) *callCtx {
	return &callCtx{base: base, deadline: deadline}
}

func (c *callCtx) Deadline() (time.Time, bool) {
	if bd, ok := c.base.Deadline(); ok && (c.deadline.IsZero() || bd.Before(c.deadline)) {
		return bd, true
	}
	return c.deadline, !c.deadline.IsZero()
}

func (c *callCtx) Value(key any) any { return c.base.Value(key) }

func (c *callCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil || c.done != nil {
		return c.err // once Done exists, Err is non-nil only when it is closed
	}
	return c.pastErr()
}

// pastErr is the error of a context whose base has ended or whose
// deadline has passed, found without the timer; nil otherwise.
func (c *callCtx) pastErr() error {
	if err := c.base.Err(); err != nil {
		return err
	}
	if !c.deadline.IsZero() && !time.Now().Before(c.deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

func (c *callCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done != nil {
		return c.done
	}
	c.done = make(chan struct{})
	if c.err == nil {
		c.err = c.pastErr()
	}
	if c.err != nil { // ended before anyone asked
		close(c.done)
		return c.done
	}
	if !c.deadline.IsZero() {
		c.timer = time.AfterFunc(time.Until(c.deadline), func() { c.end(context.DeadlineExceeded) })
	}
	c.unwatch = context.AfterFunc(c.base, func() { c.end(c.base.Err()) })
	return c.done
}

// cancel ends the call's context (Sluice cancelled the call, or it
// returned) and releases its timer.
func (c *callCtx) cancel() { c.end(context.Canceled) }

// end records err as the context's error, once, closes done when it
// exists, and stops the timer and the watch.
func (c *callCtx) end(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return
	}
	if err == nil {
		err = context.Canceled
	}
	c.err = err
	if c.done != nil {
		close(c.done)
	}
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.unwatch != nil {
		c.unwatch()
	}
}
