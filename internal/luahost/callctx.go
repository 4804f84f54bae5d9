package luahost

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// callCtx is the context a hook call runs under (L.SetContext): the
// caller's values, the Lua timeout as deadline (the caller's, if sooner),
// and a Done channel closed at that deadline or once the caller's context
// has ended, whichever comes first.
//
// Each pooled state owns one, made with the state and armed again for
// every call: context.WithTimeout cost five allocations, a new timer and a
// child registration on the caller's context per call, about 1 µs of the
// two hook calls a relayed message makes (issue 21). The caller's context
// is not watched through a registration either: the state's one timer
// looks at it every watchEvery while a call runs (a hook call is normally
// done in microseconds, before the first look), so a caller that goes
// away stops a running hook within watchEvery. Once the context has fired,
// Done stays closed and the state is discarded (Stage.call): a fired
// callCtx is never armed again.
//
// Concurrency: arm and end run on the goroutine that owns the state; the
// timer's check and children registered through AfterFunc run on others.
type callCtx struct {
	done  chan struct{}
	timer *time.Timer // runs check
	fired atomic.Bool // err is set and done is closed

	mu       sync.Mutex
	parent   context.Context // the caller's context during a call
	deadline time.Time
	ended    bool            // no call is running: check does nothing
	err      error           // context.DeadlineExceeded or the caller's Err
	afters   map[*int]func() // AfterFunc registrations not yet run
}

// watchEvery is how often a running hook call looks at its caller's
// context: the most a caller that goes away waits for the hook to stop.
const watchEvery = 5 * time.Millisecond

func newCallCtx() *callCtx {
	c := &callCtx{parent: context.Background(), done: make(chan struct{}), ended: true}
	c.timer = time.AfterFunc(time.Hour, c.check)
	c.timer.Stop()
	return c
}

// arm starts a call under parent with a deadline timeout from now (or
// parent's, if sooner). It returns c as the call's context.
func (c *callCtx) arm(parent context.Context, timeout time.Duration) context.Context {
	dl := time.Now().Add(timeout)
	if pdl, ok := parent.Deadline(); ok && pdl.Before(dl) {
		dl = pdl
	}
	c.mu.Lock()
	c.parent, c.deadline, c.ended = parent, dl, false
	c.timer.Reset(min(time.Until(dl), watchEvery))
	c.mu.Unlock()
	return c
}

// check runs from the timer while a call runs: it fires at the deadline
// or once the caller's context has ended, and otherwise looks again
// watchEvery later.
func (c *callCtx) check() {
	c.mu.Lock()
	if c.ended || c.fired.Load() {
		c.mu.Unlock()
		return
	}
	var err error
	if perr := c.parent.Err(); perr != nil {
		err = perr
	} else if d := time.Until(c.deadline); d <= 0 {
		err = context.DeadlineExceeded
	} else {
		c.timer.Reset(min(d, watchEvery))
		c.mu.Unlock()
		return
	}
	fs := c.fireLocked(err)
	c.mu.Unlock()
	runAfters(fs)
}

// end ends the call and returns the context's error: nil when the call
// ended before the deadline and before its caller's context did (as far
// as the last check saw). A non-nil error means the state must be
// discarded.
func (c *callCtx) end() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ended = true
	c.timer.Stop() // a check already started finds ended and does nothing
	if c.fired.Load() {
		return c.err
	}
	// Overran: the call returned after its deadline, but before the timer's
	// check ran (a long builtin call ends only when it ends).
	if !time.Now().Before(c.deadline) {
		fs := c.fireLocked(context.DeadlineExceeded)
		go runAfters(fs)
		return c.err
	}
	c.parent = context.Background() // keep no caller alive between calls
	clear(c.afters)                 // children left uncancelled by the call
	return nil
}

// fireLocked ends the context with err: the error is set and Done is
// closed. It returns the AfterFunc registrations to run (runAfters) once
// mu is released. Call with mu held, once.
func (c *callCtx) fireLocked(err error) []func() {
	c.err = err
	c.fired.Store(true)
	close(c.done)
	fs := make([]func(), 0, len(c.afters))
	for _, f := range c.afters {
		fs = append(fs, f)
	}
	c.afters = nil
	return fs
}

// runAfters runs AfterFunc registrations, each in its own goroutine (as
// context.AfterFunc runs them).
func runAfters(fs []func()) {
	for _, f := range fs {
		go f()
	}
}

func (c *callCtx) Deadline() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.deadline, true
}

func (c *callCtx) Done() <-chan struct{} { return c.done }

// Err is cheap while the call runs (one atomic load): Lua builtins call it
// in their loops. Until the timer's next check it does not see the
// caller's context end.
func (c *callCtx) Err() error {
	if !c.fired.Load() {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *callCtx) Value(key any) any {
	c.mu.Lock()
	p := c.parent
	c.mu.Unlock()
	return p.Value(key)
}

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
