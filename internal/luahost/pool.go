package luahost

import (
	"errors"
	"sync"
	"sync/atomic"
)

var errClosed = errors.New("luahost: host is closed")

// pool is a bounded free list of initialised Lua states. get never blocks:
// when the list is empty it builds a new state (about 76µs plus running
// the configuration program and scripts). put keeps at most max idle
// states and closes the rest. A state that failed or timed out is closed
// by its caller, never put back.
type pool struct {
	newState func() (*state, error)

	mu     sync.Mutex
	free   []*state
	max    int
	closed bool

	created   atomic.Int64
	discarded atomic.Int64
}

func (p *pool) get() (*state, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, errClosed
	}
	if n := len(p.free); n > 0 {
		st := p.free[n-1]
		p.free[n-1] = nil
		p.free = p.free[:n-1]
		p.mu.Unlock()
		return st, nil
	}
	p.mu.Unlock()
	st, err := p.newState()
	if err != nil {
		return nil, err
	}
	p.created.Add(1)
	return st, nil
}

func (p *pool) put(st *state) {
	p.mu.Lock()
	if p.closed || len(p.free) >= p.max {
		p.mu.Unlock()
		st.close()
		return
	}
	p.free = append(p.free, st)
	p.mu.Unlock()
}

// discard closes a state that must not be reused.
func (p *pool) discard(st *state) {
	p.discarded.Add(1)
	st.close()
}

// close closes the idle states; states in use are closed when put back.
func (p *pool) close() {
	p.mu.Lock()
	free := p.free
	p.free = nil
	p.closed = true
	p.mu.Unlock()
	for _, st := range free {
		st.close()
	}
}

func (p *pool) idle() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.free)
}
