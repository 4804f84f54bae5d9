// Package flight merges concurrent calls for the same key into one
// ("single flight"), like golang.org/x/sync/singleflight, with two
// differences that caches in front of network lookups need:
//
//   - each caller waits under its own context: a caller whose ctx ends
//     returns at once with the context's error, and the shared call goes
//     on for the others (it runs under context.WithoutCancel of the
//     first caller's ctx, so it keeps that ctx's values but not its
//     deadline or cancellation);
//   - the result is typed, and Waiting reports how many callers share a
//     call in flight (tests use it to start a call only once every caller
//     has joined it).
//
// Because the shared call outlives any one caller's deadline, fn must
// bound its own duration (a DNS client's per-attempt timeout, an HTTP
// client's Timeout).
package flight

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
)

// Group merges calls by key. The zero value is ready to use; a Group must
// not be copied after first use. It is safe for concurrent use.
type Group[K comparable, V any] struct {
	mu    sync.Mutex
	calls map[K]*call[V]
}

type call[V any] struct {
	done chan struct{}
	val  V
	err  error
	// panicked is set when fn panicked; read after done is closed.
	panicked *PanicError
	waiters  int // callers waiting on done; guarded by Group.mu
}

// Do returns the result of fn for key: if a call for key is in flight,
// Do waits for it instead of starting another; else it starts fn in a new
// goroutine, under context.WithoutCancel(ctx), and waits for it. Every
// caller that waited gets the same value and error (V is shared: callers
// must not mutate what it points to). The call is forgotten when fn
// returns, so a later Do calls fn again: caching results is the caller's
// business.
//
// If ctx has ended already, Do returns the zero V and context.Cause(ctx)
// without starting or joining a call. If it ends while Do waits, Do
// returns the same; the call goes on for the other callers.
//
// If fn panics, every caller waiting for it panics with a *PanicError
// holding the value and fn's stack (so a recover in a caller, such as a
// server's per-session one, still catches it, as it did when the caller
// ran fn itself), and the call is forgotten; with no caller left waiting,
// the panic goes on in fn's goroutine (and ends the program, as any
// unrecovered panic does). If fn calls runtime.Goexit, the waiting callers
// get ErrGoexit.
func (g *Group[K, V]) Do(ctx context.Context, key K, fn func(context.Context) (V, error)) (V, error) {
	if ctx.Err() != nil {
		// Neither start a call nobody will wait for nor let the select
		// below pick a result over the ended ctx.
		var zero V
		return zero, context.Cause(ctx)
	}
	g.mu.Lock()
	if g.calls == nil {
		g.calls = make(map[K]*call[V])
	}
	c, ok := g.calls[key]
	if !ok {
		c = &call[V]{done: make(chan struct{})}
		g.calls[key] = c
		go g.run(context.WithoutCancel(ctx), key, c, fn)
	}
	c.waiters++
	g.mu.Unlock()

	select {
	case <-c.done:
		if c.panicked != nil {
			panic(c.panicked)
		}
		return c.val, c.err
	case <-ctx.Done():
		g.mu.Lock()
		c.waiters--
		g.mu.Unlock()
		var zero V
		return zero, context.Cause(ctx)
	}
}

func (g *Group[K, V]) run(ctx context.Context, key K, c *call[V], fn func(context.Context) (V, error)) {
	returned := false
	defer func() {
		var rethrow any
		if !returned {
			if v := recover(); v != nil {
				c.panicked = &PanicError{Value: v, Stack: debug.Stack()}
				rethrow = v
			} else {
				c.err = ErrGoexit
			}
		}
		g.mu.Lock()
		delete(g.calls, key)
		alone := c.waiters == 0
		g.mu.Unlock()
		close(c.done)
		if rethrow != nil && alone {
			panic(rethrow)
		}
	}()
	c.val, c.err = fn(ctx)
	returned = true
}

// PanicError is what the callers of a call whose fn panicked panic with.
type PanicError struct {
	Value any    // what fn panicked with
	Stack []byte // fn's goroutine's stack when it panicked
}

func (p *PanicError) Error() string {
	return fmt.Sprintf("flight: shared call panicked: %v\n\n%s", p.Value, p.Stack)
}

// Unwrap is Value when it is an error.
func (p *PanicError) Unwrap() error {
	err, _ := p.Value.(error)
	return err
}

// ErrGoexit is the error of a call whose fn called runtime.Goexit.
var ErrGoexit = errors.New("flight: shared call ended by runtime.Goexit")

// Waiting is how many callers are waiting for the call for key now; 0
// when none is in flight.
func (g *Group[K, V]) Waiting(key K) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c, ok := g.calls[key]; ok {
		return c.waiters
	}
	return 0
}
