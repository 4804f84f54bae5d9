package shaping

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluice-mta/sluice/pipeline"
)

// TestAcquireTakesTheTurn: a site allowed 2 connections and 1 message a
// minute gives one lease, not two: the second connection could not send
// within the idle timeout, so it is not opened (it used to be dialled and
// closed unused). The lease's first Wait uses the turn Acquire took; a
// lease released unused gives it back, as it does its warm-up message.
func TestAcquireTakesTheTurn(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	w := &Warmup{Start: now, Steps: []WarmupStep{{Days: 1, Daily: 2}}}
	s, _, _ := newShaper(t, `
["default"]
connection_limit = 2
max_message_rate = "1/m"
`, Options{Sources: []Source{{Name: "s", Warmup: w}}, Pools: map[string][]string{"P": {"s"}},
		Now: func() time.Time { return now }})
	l1, _, _, _ := s.Acquire("site", "P", 5*time.Second)
	if l1 == nil {
		t.Fatal("no first lease")
	}
	if l2, retry, why, _ := s.Acquire("site", "P", 5*time.Second); l2 != nil || why != ReasonRate || !retry.Equal(now.Add(time.Minute)) {
		t.Fatalf("second lease at 1/minute: %v, held until %v (want %v) for %q", l2, retry, now.Add(time.Minute), why)
	}
	l1.Release() // the dial failed: the turn and the day's message come back
	l1, _, _, _ = s.Acquire("site", "P", 5*time.Second)
	if l1 == nil {
		t.Fatal("no lease after the unused one was released")
	}
	defer l1.Release()
	for i := 0; i < 2; i++ { // the day's two messages, a minute apart
		if retry, why, _ := l1.Wait(context.Background(), 5*time.Second); !retry.IsZero() {
			t.Fatalf("message %d on the lease: held until %v for %q", i+1, retry, why)
		}
		now = now.Add(time.Minute)
	}
	if retry, why, _ := l1.Wait(context.Background(), 5*time.Second); why != ReasonWarmup || retry.IsZero() {
		t.Fatalf("third message, past the day's two: %q until %v", why, retry)
	}
}

// TestDelayedCountedOnce: a message whose rate turn is past the idle
// timeout is held once in sluice_shaping_delayed_total: Wait sends it
// back without counting, and Acquire counts the hold (it used to count
// twice); a message Wait holds on its connection counts once.
func TestDelayedCountedOnce(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	s, _, _ := newShaper(t, `
["default"]
max_message_rate = "1/h"
`, Options{Now: func() time.Time { return now }})
	l, _, _, _ := s.Acquire("site", "", time.Second)
	if retry, _, _ := l.Wait(context.Background(), time.Second); !retry.IsZero() {
		t.Fatal("first message held")
	}
	// The queue's worker: Wait says come back in an hour, so it closes the
	// connection and asks Acquire again, which holds the destination.
	if retry, why, _ := l.Wait(context.Background(), time.Second); why != ReasonRate || retry.IsZero() {
		t.Fatalf("second message: %q until %v", why, retry)
	}
	l.Release()
	if l, _, why, _ := s.Acquire("site", "", time.Second); l != nil || why != ReasonRate {
		t.Fatalf("acquire: %v %q", l, why)
	}
	if got := testutil.ToFloat64(s.delayed.WithLabelValues(ReasonRate)); got != 1 {
		t.Fatalf("delayed{reason=rate} = %v for one held message, want 1", got)
	}

	// A turn within the bound: Wait holds the message on its connection.
	s2, _, _ := newShaper(t, `
["default"]
max_message_rate = "100/s"
`, Options{})
	l, _, _, _ = s2.Acquire("site", "", time.Second)
	defer l.Release()
	held := 0.0
	for i := 0; i < 101 && held == 0; i++ { // the burst is 1: the second waits
		if retry, why, _ := l.Wait(context.Background(), time.Second); !retry.IsZero() {
			t.Fatalf("message %d sent away (%q)", i+1, why)
		}
		held = testutil.ToFloat64(s2.delayed.WithLabelValues(ReasonRate))
	}
	if held != 1 {
		t.Fatalf("delayed{reason=rate} = %v after the first wait on the connection, want 1", held)
	}
}

// TestThresholdMemoryBounded: the match times a Threshold rule keeps are
// those of its last period only, and the state of sites that went quiet
// (their paths, with their match times) is forgotten: 3,000 sites each
// matched once, then quiet past the period, leave fewer than 2,048 paths
// and no match times; a site matched in the meantime keeps its state.
func TestThresholdMemoryBounded(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	s, evs, _ := newShaper(t, `
[["default".automation]]
regex = 'slow down'
trigger = { Threshold = "5/minute" }
action = "Suspend"
duration = "1h"
`, Options{Now: func() time.Time { return now }})
	hit := func(site string) {
		l, _, _, _ := s.Acquire(site, "", time.Second)
		if l == nil {
			t.Fatalf("no lease for %s", site)
		}
		l.Observe([]*pipeline.Response{{Code: 421, Text: "slow down"}}, nil)
		l.Release()
	}
	// One site matched every 2 minutes, 100 times: never 5 within a
	// minute, and one match time kept, not 100.
	for i := 0; i < 100; i++ {
		hit("steady")
		now = now.Add(2 * time.Minute)
	}
	s.mu.Lock()
	kept := len(s.paths["steady|"+DefaultSource].hits[0])
	s.mu.Unlock()
	if kept != 1 || len(evs.list()) != 0 {
		t.Fatalf("after 100 matches 2 minutes apart: %d match times kept (want 1), %d events (want 0)", kept, len(evs.list()))
	}
	for i := 0; i < 3000; i++ {
		hit("site" + strconv.Itoa(i))
	}
	hit("busy")
	now = now.Add(2 * time.Minute)
	hit("busy") // within its own period: kept
	for i := 0; i < 3000; i++ {
		l, _, _, _ := s.Acquire("new"+strconv.Itoa(i), "", time.Second)
		l.Release()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	stale := 0
	for k, p := range s.paths {
		if strings.HasPrefix(k, "site") && len(p.hits) > 0 {
			stale++
		}
	}
	if n := len(s.paths); n >= 4096 || stale > 0 {
		t.Fatalf("%d paths held (want < 4,096 of 6,102 made), %d with stale match times", n, stale)
	}
	if p := s.paths["busy|"+DefaultSource]; p == nil || len(p.hits[0]) != 1 {
		t.Fatalf("the busy site lost its recent match: %+v", p)
	}
}
