package testutil

import (
	"testing"
	"time"
)

// WaitTimeout is how long WaitFor polls before it fails the test. It is
// generous because it only bounds how long a failing test takes; a passing
// one returns as soon as its condition holds.
const WaitTimeout = 15 * time.Second

// pollInterval is the pause between two calls of a condition.
const pollInterval = 5 * time.Millisecond

// WaitFor calls cond every few milliseconds until it returns true, and fails
// the test with "timed out ... waiting for <what>" if it has not after
// WaitTimeout. Use it instead of a sleep to wait for asynchronous work. It
// must be called from the test's goroutine (it calls t.Fatalf); cond may run
// concurrently with the work it observes, so it must read shared state
// safely.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	WaitForWithin(t, WaitTimeout, what, cond)
}

// WaitForWithin is WaitFor with an explicit deadline, for tests whose
// assertion is that something happens within timeout.
func WaitForWithin(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(pollInterval)
	}
}
