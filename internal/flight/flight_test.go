package flight_test

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/sluice-mta/sluice/internal/flight"
)

// TestDoMerges: callers that overlap share one call; one whose ctx ends
// returns its ctx error while the call goes on for the others; a later
// Do calls fn again.
func TestDoMerges(t *testing.T) {
	var g flight.Group[string, int]
	var calls atomic.Int64
	gate := make(chan struct{})
	fn := func(ctx context.Context) (int, error) {
		calls.Add(1)
		<-gate
		if err := ctx.Err(); err != nil {
			return 0, err // would mean a caller's cancellation reached the call
		}
		return 42, nil
	}
	const n = 5
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if v, err := g.Do(context.Background(), "k", fn); v != 42 || err != nil {
				t.Errorf("Do = %d, %v", v, err)
			}
		}()
	}
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error, 1)
	go func() {
		_, err := g.Do(ctx, "k", fn)
		gaveUp <- err
	}()
	for g.Waiting("k") != n+1 {
		runtime.Gosched()
	}
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller: err %v, want context.Canceled", err)
	}
	if w := g.Waiting("k"); w != n {
		t.Fatalf("Waiting after one gave up = %d, want %d", w, n)
	}
	close(gate)
	wg.Wait()
	if c := calls.Load(); c != 1 {
		t.Fatalf("fn called %d times, want 1", c)
	}
	if g.Waiting("k") != 0 {
		t.Fatal("call not forgotten after it ended")
	}
	if v, err := g.Do(context.Background(), "k", fn); v != 42 || err != nil || calls.Load() != 2 {
		t.Fatalf("later Do = %d, %v, calls %d; want a new call", v, err, calls.Load())
	}
}

// A panicking fn reaches every waiting caller as a panic in its own
// goroutine (where its recover can catch it), and the key is free again;
// before, the panic ended the program from fn's goroutine.
func TestDoPanicReachesCallers(t *testing.T) {
	var g flight.Group[string, int]
	gate := make(chan struct{})
	fn := func(context.Context) (int, error) {
		<-gate
		panic("boom")
	}
	const n = 4
	got := make(chan any, n)
	for range n {
		go func() {
			defer func() { got <- recover() }()
			g.Do(context.Background(), "k", fn)
		}()
	}
	for g.Waiting("k") != n {
		runtime.Gosched()
	}
	close(gate)
	for range n {
		v := <-got
		pe, ok := v.(*flight.PanicError)
		if !ok || pe.Value != "boom" || len(pe.Stack) == 0 {
			t.Fatalf("caller recovered %#v, want a *flight.PanicError for boom", v)
		}
	}
	if v, err := g.Do(context.Background(), "k", func(context.Context) (int, error) { return 7, nil }); v != 7 || err != nil {
		t.Fatalf("Do after the panic = %d, %v", v, err)
	}
}

// A fn that calls runtime.Goexit ends the call with ErrGoexit rather than
// leaving its callers (and every later caller for the key) waiting.
func TestDoGoexit(t *testing.T) {
	var g flight.Group[string, int]
	_, err := g.Do(context.Background(), "k", func(context.Context) (int, error) {
		runtime.Goexit()
		return 0, nil
	})
	if !errors.Is(err, flight.ErrGoexit) {
		t.Fatalf("err %v, want ErrGoexit", err)
	}
}

// A caller whose ctx has already ended gets its ctx error and starts no
// call: before, it started fn (a DNS query, a policy fetch) that nobody
// waited for, and when fn was quick the select could return fn's result
// to a cancelled caller (dnsx's "context cancelled" test failed about 1
// run in 200 under -race). Here a later caller must get a call of its
// own, not join the one the cancelled caller would have left behind.
func TestDoEndedCtxStartsNothing(t *testing.T) {
	var g flight.Group[string, int]
	gate, gate2 := make(chan struct{}), make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := g.Do(ctx, "k", func(context.Context) (int, error) { <-gate; return 42, nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("Do with an ended ctx: err %v, want context.Canceled", err)
	}
	got := make(chan int, 1)
	go func() {
		v, _ := g.Do(context.Background(), "k", func(context.Context) (int, error) { <-gate2; return 7, nil })
		got <- v
	}()
	for g.Waiting("k") != 1 {
		runtime.Gosched()
	}
	close(gate)
	close(gate2)
	if v := <-got; v != 7 {
		t.Fatalf("later Do = %d, want 7 from its own call (it joined the call of a caller that had already given up)", v)
	}
}
