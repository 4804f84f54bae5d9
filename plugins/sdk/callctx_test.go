package sdk

import (
	"context"
	"errors"
	"testing"
	"time"
)

func waitDone(t *testing.T, c context.Context) {
	t.Helper()
	select {
	case <-c.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("Done not closed within 30 s")
	}
}

// TestCallCtx: a call's context ends at its deadline, when cancelled and
// when the stream's context ends, whether Done was asked for before or
// after; Err is nil until then and names the cause after.
func TestCallCtx(t *testing.T) {
	t.Run("deadline, Done first", func(t *testing.T) {
		c := newCallCtx(context.Background(), time.Now().Add(20*time.Millisecond))
		defer c.cancel()
		if d, ok := c.Deadline(); !ok || d.IsZero() {
			t.Fatal("no deadline")
		}
		done := c.Done()
		if c.Err() != nil {
			t.Fatalf("Err %v before the deadline", c.Err())
		}
		<-done
		if !errors.Is(c.Err(), context.DeadlineExceeded) {
			t.Fatalf("Err %v", c.Err())
		}
	})
	t.Run("deadline passed, Done after", func(t *testing.T) {
		c := newCallCtx(context.Background(), time.Now().Add(-time.Millisecond))
		defer c.cancel()
		if !errors.Is(c.Err(), context.DeadlineExceeded) {
			t.Fatalf("Err %v", c.Err())
		}
		waitDone(t, c)
		if !errors.Is(c.Err(), context.DeadlineExceeded) {
			t.Fatalf("Err %v after Done", c.Err())
		}
	})
	t.Run("cancel", func(t *testing.T) {
		c := newCallCtx(context.Background(), time.Time{})
		if _, ok := c.Deadline(); ok {
			t.Fatal("a deadline without one")
		}
		done := c.Done()
		c.cancel()
		<-done
		if !errors.Is(c.Err(), context.Canceled) {
			t.Fatalf("Err %v", c.Err())
		}
		c.cancel() // twice is harmless
	})
	t.Run("cancel before Done", func(t *testing.T) {
		c := newCallCtx(context.Background(), time.Now().Add(time.Hour))
		c.cancel()
		waitDone(t, c)
		if !errors.Is(c.Err(), context.Canceled) {
			t.Fatalf("Err %v", c.Err())
		}
	})
	t.Run("stream ends", func(t *testing.T) {
		type key struct{}
		base, end := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
		c := newCallCtx(base, time.Now().Add(time.Hour))
		defer c.cancel()
		if c.Value(key{}) != "v" {
			t.Fatal("the stream's values are lost")
		}
		// A child context (as a hook's outgoing call makes) ends with it.
		child, stop := context.WithTimeout(c, time.Hour)
		defer stop()
		end()
		waitDone(t, child)
		if !errors.Is(c.Err(), context.Canceled) || !errors.Is(child.Err(), context.Canceled) {
			t.Fatalf("Err %v, child %v", c.Err(), child.Err())
		}
	})
}

// BenchmarkCallCtxErr: the check Calls makes before each inline call
// (a call whose deadline passed while queued is not run): Err of a fresh
// call context with a deadline, as the relay sends it (the context's
// allocation, made for every call anyway, is not counted).
func BenchmarkCallCtxErr(b *testing.B) {
	c := newCallCtx(context.Background(), time.Now().Add(time.Hour))
	for b.Loop() {
		if c.Err() != nil {
			b.Fatal("expired")
		}
	}
}
