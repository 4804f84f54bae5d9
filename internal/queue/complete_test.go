package queue

import (
	"context"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
)

// TestLastOutcomeDeletesMessageInOneCommit: when a delivery settles every
// recipient a message has left, their outcomes and the message's deletion
// go to the spool in one batch (one commit, atomic), not in two.
func TestLastOutcomeDeletesMessageInOneCommit(t *testing.T) {
	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	fd := &fakeDialer{replies: map[string][]error{"bad@b.test": {perm}}}
	q := newQueue(sp, fd, fakeBouncer{}, Options{})
	q.Start()
	defer q.Stop(context.Background())
	m, rs := put(t, sp, "", "ok@b.test", "bad@b.test") // null sender: no bounce to commit
	before := sp.Commits()
	q.Enqueue(m, rs)
	testutil.WaitFor(t, "settled", func() bool { return q.Stats().Messages == 0 })
	if got := sp.Commits() - before; got != 1 {
		t.Errorf("%d spool commits to settle a one-destination message; want 1 (outcomes and deletion together)", got)
	}
	if _, err := sp.Body(m.ID); err == nil {
		t.Error("message body still spooled after every recipient settled")
	}
	if got := strings.Join(events(t, sp, m.ID), " "); got != "delivered:ok@b.test bounced:bad@b.test" {
		t.Errorf("events %q", got)
	}
}
