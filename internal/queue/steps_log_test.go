package queue

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
)

// TestCancelRefusedLogsNoOutcome: a cancel stops at the outcome the
// spool refuses. The log has a "delivery outcome ... result=cancelled"
// line for each recipient it cancelled and none for the refused message
// (it stays queued), whose refusal is logged instead.
func TestCancelRefusedLogsNoOutcome(t *testing.T) {
	sp, avail := fillingSpool(t)
	const total = 3000
	spoolQueued(t, sp, total, 2)
	var logs syncBuffer
	q := New(sp, &fakeDialer{}, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	q.stepRecipients = 500
	q.betweenSteps = func() { avail.Store(1000) }
	if n, err := q.Load(); n != total || err != nil {
		t.Fatalf("Load = %d, %v", n, err)
	}
	n, err := q.Cancel(Target{}, "k")
	var ie *IncompleteError
	if !errors.As(err, &ie) || n < 500 || n >= total {
		t.Fatalf("Cancel = %d, %v; want some cancelled and an IncompleteError", n, err)
	}
	cancelled, refused := 0, 0
	for _, l := range strings.Split(logs.String(), "\n") {
		switch {
		case strings.Contains(l, `msg="delivery outcome"`) && strings.Contains(l, "result=cancelled"):
			cancelled++
		case strings.Contains(l, `msg="cannot record an operator's action on a message`) && strings.Contains(l, "result=cancelled"):
			refused++
		}
	}
	if cancelled != n || refused != 1 {
		t.Fatalf("%d recipients cancelled; the log has %d outcome lines (want %d) and %d refusals (want 1)", n, cancelled, n, refused)
	}
}
