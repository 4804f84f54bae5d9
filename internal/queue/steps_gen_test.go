package queue

import (
	"log/slog"
	"testing"
)

// TestHoldAMessageOlderThanTwoBillionMessages: a message stays queued
// (held, say: held mail does not expire) while more than 2^31 others
// come and go on a node that is not restarted (about 25 days at 1,000
// messages a second). A queue-wide action still acts on it: a message
// is left out of a step only when it was queued after the action began,
// however far the generation counter has run since the message came.
func TestHoldAMessageOlderThanTwoBillionMessages(t *testing.T) {
	sp := openSpool(t)
	spoolQueued(t, sp, 3, 1)
	q := New(sp, &fakeDialer{}, Options{Logger: slog.New(slog.DiscardHandler)})
	if n, err := q.Load(); n != 3 || err != nil {
		t.Fatalf("Load = %d, %v", n, err)
	}
	q.mu.Lock()
	q.msgs.gen += 1<<31 + 10 // as if 2^31+10 messages had come and gone since
	q.mu.Unlock()
	if n, err := q.Hold(Target{}, "k"); n != 3 || err != nil {
		t.Fatalf("Hold = %d, %v; want the 3 old recipients", n, err)
	}
	if n, err := q.Release(Target{}, "k"); n != 3 || err != nil {
		t.Fatalf("Release = %d, %v; want the 3 old recipients", n, err)
	}
}
