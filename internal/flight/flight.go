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
	"sync"
)

// Group merges calls by key. The zero value is ready to use; a Group must
// not be copied after first use. It is safe for concurrent use.
type Group[K comparable, V any] struct {
	mu    sync.Mutex
	calls map[K]*call[V]
}

type call[V any] struct {
	done    chan struct{}
	val     V
	err     error
	waiters int // callers waiting on done; guarded by Group.mu
}

// Do returns the result of fn for key: if a call for key is in flight,
// Do waits for it instead of starting another; else it starts fn in a new
// goroutine, under context.WithoutCancel(ctx), and waits for it. Every
// caller that waited gets the same value and error (V is shared: callers
// must not mutate what it points to). The call is forgotten when fn
// returns, so a later Do calls fn again: caching results is the caller's
// business.
//
// If ctx ends first, Do returns the zero V and context.Cause(ctx); the
// call goes on for the other callers. fn must not panic.
func (g *Group[K, V]) Do(ctx context.Context, key K, fn func(context.Context) (V, error)) (V, error) {
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
	c.val, c.err = fn(ctx)
	g.mu.Lock()
	delete(g.calls, key)
	g.mu.Unlock()
	close(c.done)
}

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
