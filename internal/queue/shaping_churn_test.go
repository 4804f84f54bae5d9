package queue

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// slowDialer takes 50 ms to connect, as a next hop's TCP handshake,
// greeting and EHLO do: the workers started together all ask for their
// connection before the first one sends.
type slowDialer struct{ *fakeDialer }

func (d slowDialer) Dial(ctx context.Context, r *pipeline.Route, domain string) (Conn, error) {
	time.Sleep(50 * time.Millisecond)
	return d.fakeDialer.Dial(ctx, r, domain)
}

// TestShapingNoUnusedConnections: 5 messages for a site allowed 3
// connections and 1 message an hour open one connection, which carries
// the hour's message; the other workers do not dial connections they
// could not use (they used to, and closed them without a message).
func TestShapingNoUnusedConnections(t *testing.T) {
	sh := newShaper(t, "[\"default\"]\nconnection_limit = 3\nmax_message_rate = \"1/hour\"\n")
	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	fd := &fakeDialer{}
	q := New(sp, slowDialer{fd}, Options{IdleTimeout: 200 * time.Millisecond, Shaper: sh, MaxPerDestination: 3, Logger: slog.New(slog.DiscardHandler)})
	for _, r := range []string{"v@b.test", "w@b.test", "x@b.test", "y@b.test", "z@b.test"} {
		m, rs := put(t, sp, "s@a.test", r)
		q.Enqueue(m, rs)
	}
	q.Start()
	defer q.Stop(context.Background())
	testutil.WaitFor(t, "one sent, four held", func() bool {
		fd.mu.Lock()
		sent, open := len(fd.sent), fd.open
		fd.mu.Unlock()
		s := q.Stats()
		return sent == 1 && open == 0 && s.Waiting == 4 && s.Active == 0
	})
	fd.mu.Lock()
	defer fd.mu.Unlock()
	if fd.dials != 1 {
		t.Fatalf("%d connections dialled for the hour's one message, want 1", fd.dials)
	}
}
