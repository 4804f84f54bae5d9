package queue

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
)

// TestControlShapedSite: with shaping on a queue is named by its site;
// pausing the site and retrying it makes its held recipients ready but
// not delivered; resuming hands them back to shaping, whose rate (1 per
// hour) holds them again rather than the retry bypassing it.
func TestControlShapedSite(t *testing.T) {
	sh := newShaper(t, "[\"default\"]\nmax_message_rate = \"1/hour\"\n")
	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	fd := &fakeDialer{}
	q := New(sp, fd, Options{IdleTimeout: 200 * time.Millisecond, Shaper: sh, Logger: slog.New(slog.DiscardHandler)})
	q.Start()
	defer q.Stop(context.Background())
	for _, r := range []string{"x@b.test", "y@b.test", "z@b.test"} {
		m, rs := put(t, sp, "s@a.test", r)
		q.Enqueue(m, rs)
	}
	sent := func() int { fd.mu.Lock(); defer fd.mu.Unlock(); return len(fd.sent) }
	testutil.WaitFor(t, "one sent, two held", func() bool { return sent() == 1 && q.Stats().Waiting == 2 && q.Stats().Active == 0 })
	qs := q.Queues()
	if len(qs) != 1 || qs[0].Waiting != 2 || qs[0].Ready != 0 || qs[0].NextAttempt == nil || qs[0].Paused {
		t.Fatalf("queues: %+v", qs)
	}
	site := qs[0].Name
	if site == "b.test" {
		t.Fatalf("with shaping the queue should be the site, not the domain: %q", site)
	}
	if changed, err := q.Pause(site, "key1"); !changed || err != nil {
		t.Fatalf("Pause: %v %v", changed, err)
	}
	if n, err := q.RetryQueue(site, "key1"); n != 2 || err != nil {
		t.Fatalf("RetryQueue moved %d (%v), want 2", n, err)
	}
	if qs := q.Queues(); qs[0].Ready != 2 || qs[0].Waiting != 0 || !qs[0].Paused {
		t.Fatalf("paused and retried: %+v", qs)
	}
	if n, err := q.Retry(Target{MessageID: "01KB2T0A5V0W9X8Y7Z6A5B4C3D"}, "key1"); !errors.Is(err, ErrNotQueued) || n != 0 {
		t.Fatalf("Retry of an unknown id: %d %v", n, err)
	}
	if changed, _ := q.Resume(site, "key1"); !changed {
		t.Fatal("Resume: not changed")
	}
	testutil.WaitFor(t, "shaping holds them again", func() bool { return q.Stats().Waiting == 2 && q.Stats().Active == 0 })
	if sent() != 1 {
		t.Fatalf("a retry bypassed the site's rate: %d sent", sent())
	}
	if qs := q.Queues(); len(qs) != 1 || qs[0].Paused {
		t.Fatalf("after resume: %+v", qs)
	}
}
