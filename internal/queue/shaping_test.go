package queue

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/internal/shaping"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestShapingHoldsWhatTheRateRefuses: with a site rate of 1 per hour,
// the first message goes and the others wait in the timer heap, without
// a connection held open for them and without a failed attempt.
func TestShapingHoldsWhatTheRateRefuses(t *testing.T) {
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
	var ids []string
	for _, r := range []string{"x@b.test", "y@b.test", "z@b.test"} {
		m, rs := put(t, sp, "s@a.test", r)
		q.Enqueue(m, rs)
		ids = append(ids, m.ID)
	}
	testutil.WaitFor(t, "one sent, two held", func() bool {
		fd.mu.Lock()
		sent, open := len(fd.sent), fd.open
		fd.mu.Unlock()
		s := q.Stats()
		return sent == 1 && open == 0 && s.Waiting == 2 && s.Active == 0
	})
	for _, id := range ids {
		for _, e := range events(t, sp, id) {
			if strings.HasPrefix(e, "deferred") {
				t.Errorf("message %s: a held message got %s", id, e)
			}
		}
	}
}

// newShaper is a Shaper with the rules of a shaping file's text, whose
// DNS (a server on loopback) gives b.test one MX host.
func newShaper(tb testing.TB, toml string) *shaping.Shaper {
	tb.Helper()
	dns := dnstest.NewServer(tb)
	dns.AddMX("b.test", 10, "mx.b.test")
	res, err := dnsx.New(dnsx.Options{Server: dns.Addr()})
	if err != nil {
		tb.Fatal(err)
	}
	rules, err := shaping.Parse("t.toml", []byte(toml))
	if err != nil {
		tb.Fatal(err)
	}
	sh, err := shaping.New(shaping.Options{Rules: rules, Resolver: res, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(sh.Stop)
	return sh
}

// TestUnknownPoolDefers: a route naming a pool that is not configured
// (here: no sluice.egress at all) defers with 451 4.3.5 and never dials.
func TestUnknownPoolDefers(t *testing.T) {
	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	m, rs := put(t, sp, "s@a.test", "x@b.test")
	rs[0].Route = &pipeline.Route{Kind: pipeline.RouteMX, Pool: "nope"}
	fd := &fakeDialer{}
	q := New(sp, fd, Options{RetryInitial: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	q.Start()
	defer q.Stop(context.Background())
	q.Enqueue(m, rs)
	testutil.WaitFor(t, "deferred", func() bool { return len(events(t, sp, m.ID)) == 1 })
	h, _ := sp.History(m.ID)
	if e := h[0]; e.Type != pipeline.EventDeferred || e.Response.Code != 451 || e.Response.Enhanced != "4.3.5" || !strings.Contains(e.Response.Text, `"nope"`) {
		t.Errorf("event %+v %+v", e, e.Response)
	}
	fd.mu.Lock()
	defer fd.mu.Unlock()
	if fd.dials != 0 {
		t.Errorf("%d dials for an unknown pool", fd.dials)
	}
}
