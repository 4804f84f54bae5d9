package httpapi

import (
	"errors"
	"testing"

	"github.com/sluice-mta/sluice/internal/queue"
)

// TestIncompleteText: the 503 answer of an action stopped part way says
// what was done, at most how much is left, and to run it again; one that
// did nothing says that nothing changed.
func TestIncompleteText(t *testing.T) {
	for _, c := range []struct {
		action string
		ie     queue.IncompleteError
		want   string
	}{
		{"hold", queue.IncompleteError{Done: 30000, Left: 980000},
			"30000 recipients held, then the spool could not record the rest (at most 980000 more recipients, as they were): run it again to hold the rest"},
		{"cancel", queue.IncompleteError{Done: 12, Left: 3},
			"12 recipients cancelled, then the spool could not record the rest (at most 3 more recipients, as they were): run it again to cancel the rest"},
		{"release", queue.IncompleteError{Done: 0, Left: 5},
			"cannot record the release now (nothing changed), try again later"},
		// Stopped at a step the spool could not read back, not record.
		{"hold", queue.IncompleteError{Done: 20000, Left: 7, Unread: true},
			"20000 recipients held, then the rest could not be read back from the spool (at most 7 more recipients, as they were): run it again to hold the rest"},
		// Its queue_held event was refused too: the answer says the log has it.
		{"hold", queue.IncompleteError{Done: 10000, Left: 4, EventErr: errors.New("full")},
			"10000 recipients held, then the spool could not record the rest (at most 4 more recipients, as they were): run it again to hold the rest; the spool refused this hold's event too, so the relay's log line is its only record"},
		{"release", queue.IncompleteError{Done: 0, Left: 5, Unread: true},
			"cannot read the queued recipients back from the spool for the release now (nothing changed), try again later"},
	} {
		c.ie.Err = errors.New("full")
		if got := incompleteText(c.action, &c.ie); got != c.want {
			t.Errorf("%s %+v:\n got %q\nwant %q", c.action, c.ie, got, c.want)
		}
	}
}
