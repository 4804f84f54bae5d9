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
