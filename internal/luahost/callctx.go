package luahost

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// callCtx is the context a hook call runs under (L.SetContext): the
// caller's values, the Lua timeout as deadline (the caller's, if sooner),
// and a Done channel closed at that deadline or when the caller's context
// ends, whichever comes first.
//
// Each pooled state owns one, made with the state and armed again for
// every call: context.WithTimeout cost five allocations, a new timer and a
// child registration per call, about 1 µs of the two hook calls a relayed
// message makes (issue 21). Once it has fired, Done stays closed and the
// state is discarded (Stage.call), so a fired callCtx is never armed again.
//
// Concurrency: arm and end run on the goroutine that owns the state; the
// timer, the caller's AfterFunc and children registered through AfterFunc
// may fire from other goroutines at any time in between.
type callCtx struct {
	parent   context.Context // the caller's context during a call
	deadline time.Time
	done     chan struct{}
	timer    *time.Timer     // fires at deadline: fire(DeadlineExceeded)
	onParent func()          // fires when parent ends: fire(parent.Err())
	unwatch  func() bool     // parent's AfterFunc registration (nil: none)
	fired    atomic.Bool     // Err is set and done is closed
	mu       sync.Mutex      // guards err and afters
	err      error           // context.DeadlineExceeded or the caller's Err
	afters   map[*int]func() // AfterFunc registrations not yet run
}

func newCallCtx() *callCtx {
	c := &callCtx{parent: context.Background(), done: make(chan struct{})}
	c.timer = time.AfterFunc(time.Hour, func() { c.fire(context.DeadlineExceeded) })
	c.timer.Stop()
	c.onParent = func() { c.fire(c.parent.Err()) }
	return c
}

// arm starts a call under parent with a deadline timeout from now (or
// parent's, if sooner). It returns c as the call's context.
func (c *callCtx) arm(parent context.Context, timeout time.Duration) context.Context {
	dl := time.Now().Add(timeout)
	if pdl, ok := parent.Deadline(); ok && pdl.Before(dl) {
		dl = pdl
	}
	c.parent, c.deadline = parent, dl
	c.timer.Reset(time.Until(dl))
	if parent.Done() != nil {
		c.unwatch = context.AfterFunc(parent, c.onParent)
	}
	return c
}

// end ends the call: it stops the timer and the watch on the caller's
// context and returns the context's error, nil when the call ended before
// either fired. A non-nil error means the state must be discarded.
func (c *callCtx) end() error {
	timerStopped := c.timer.Stop()
	parentStopped := true
	if c.unwatch != nil {
		parentStopped = c.unwatch()
		c.unwatch = nil
	}
	if !timerStopped || !parentStopped {
		// One of them fired, or is firing now: make sure the error is
		// set before it is read (fire is idempotent).
		err := error(context.DeadlineExceeded)
		if !parentStopped {
			if perr := c.parent.Err(); perr != nil {
				err = perr
			}
		}
		c.fire(err)
	}
	err := c.Err()
	if err == nil {
		c.parent = context.Background() // keep no caller alive between calls
		clear(c.afters)                 // children left uncancelled by the call
	}
	return err
}

// fire ends the context with err, once: the error is set, Done is closed
// and the AfterFunc registrations run, each in its own goroutine (as
// context.AfterFunc runs them).
func (c *callCtx) fire(err error) {
	c.mu.Lock()
	if c.fired.Load() {
		c.mu.Unlock()
		return
	}
	c.err = err
	c.fired.Store(true)
	fs := c.afters
	c.afters = nil
	c.mu.Unlock()
	close(c.done)
	for _, f := range fs {
		go f()
	}
}

func (c *callCtx) Deadline() (time.Time, bool) { return c.deadline, true }

func (c *callCtx) Done() <-chan struct{} { return c.done }

// Err is cheap while the call runs (one atomic load): Lua builtins call it
// in their loops.
func (c *callCtx) Err() error {
	if !c.fired.Load() {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *callCtx) Value(key any) any { return c.parent.Value(key) }

// AfterFunc arranges for f to run (in its own goroutine) when c fires,
// and returns a function that cancels that, reporting whether it did. The
// context package uses it for children made from c (a Lua builtin's
// context.WithTimeout), which then cost no watching goroutine.
func (c *callCtx) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fired.Load() {
		go f()
		return func() bool { return false }
	}
	key := new(int)
	if c.afters == nil {
		c.afters = map[*int]func(){}
	}
	c.afters[key] = f
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if _, ok := c.afters[key]; !ok {
			return false
		}
		delete(c.afters, key)
		return true
	}
}

// stop releases the timer of a state being closed.
func (c *callCtx) stop() { c.timer.Stop() }
