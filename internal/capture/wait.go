package capture

import (
	"context"
	"errors"
	"sync"
)

// ErrClosed is returned by Wait and Subscribe's channel closing when the
// store closes.
var ErrClosed = errors.New("sandbox store closed")

// waiter is one Wait call or stream subscriber: a few hundred bytes and
// a channel of bounded capacity, whatever arrives.
type waiter struct {
	tenant string
	f      Filter // lower case
	ch     chan *Summary
	// stream subscribers get every match (dropped when their buffer is
	// full: lagged); a Wait takes the first only.
	stream bool
	lagged bool
}

// hub hands captured messages to the waiters of their tenant.
type hub struct {
	mu      sync.Mutex
	closed  bool
	waiters map[string]map[*waiter]struct{}
}

func newHub() *hub { return &hub{waiters: map[string]map[*waiter]struct{}{}} }

func (h *hub) add(w *waiter) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	m := h.waiters[w.tenant]
	if m == nil {
		m = map[*waiter]struct{}{}
		h.waiters[w.tenant] = m
	}
	m[w] = struct{}{}
	return true
}

func (h *hub) remove(w *waiter) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if m := h.waiters[w.tenant]; m != nil {
		delete(m, w)
		if len(m) == 0 {
			delete(h.waiters, w.tenant)
		}
	}
}

// publish offers e (with its lower-cased searchable text) to its
// tenant's waiters. It never blocks.
func (h *hub) publish(e *entry, text []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for w := range h.waiters[e.s.Tenant] {
		if !w.f.matchIndexed(e) || !holdsTerms(text, w.f.terms) {
			continue
		}
		select {
		case w.ch <- e.s:
		default:
			if w.stream && !w.lagged {
				w.lagged = true
				close(w.ch)
			}
		}
	}
}

func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for _, m := range h.waiters {
		for w := range m {
			if !w.lagged {
				close(w.ch)
				w.lagged = true
			}
		}
	}
	h.waiters = map[string]map[*waiter]struct{}{}
}

// Wait returns the newest of tenant's messages matching f that is
// already captured, or else the first one captured after the call,
// waiting until ctx ends (then ctx's error). Each waiting call holds a
// channel of one and a registration, nothing per message captured
// meanwhile.
func (s *Store) Wait(ctx context.Context, tenant string, f Filter) (*Summary, error) {
	w := &waiter{tenant: tenant, f: f.lower(), ch: make(chan *Summary, 1)}
	// Register before looking, so a capture between the two is not
	// missed.
	if !s.hub.add(w) {
		return nil, ErrClosed
	}
	defer s.hub.remove(w)
	p, err := s.Search(tenant, f, 0, 1)
	if err != nil {
		return nil, err
	}
	if len(p.Messages) > 0 {
		return p.Messages[0], nil
	}
	select {
	case sm, ok := <-w.ch:
		if !ok {
			return nil, ErrClosed
		}
		return sm, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Subscribe streams tenant's messages matching f as they are captured,
// until cancel is called. The channel holds up to buf messages; a
// subscriber that falls further behind has its channel closed (lagged)
// and should subscribe again and list what it missed.
func (s *Store) Subscribe(tenant string, f Filter, buf int) (<-chan *Summary, func()) {
	w := &waiter{tenant: tenant, f: f.lower(), ch: make(chan *Summary, buf), stream: true}
	if !s.hub.add(w) {
		ch := make(chan *Summary)
		close(ch)
		return ch, func() {}
	}
	return w.ch, func() { s.hub.remove(w) }
}

// Waiters returns how many waits and streams are registered for tenant.
func (s *Store) Waiters(tenant string) int {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	return len(s.hub.waiters[tenant])
}
