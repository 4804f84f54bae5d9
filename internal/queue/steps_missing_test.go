package queue

import (
	"log/slog"
	"maps"
	"strings"
	"testing"
)

// TestHoldAndReleaseDropRecipientsMissingFromTheSpool: the index holds a
// recipient whose spool record is gone (deleted behind the queue's
// back). A hold or a release must not stop at it for good (a held one
// is never attempted, so nothing else would ever drop it): they drop it,
// as bounce and cancel do, and act on the rest.
func TestHoldAndReleaseDropRecipientsMissingFromTheSpool(t *testing.T) {
	for _, action := range []string{"hold", "release"} {
		t.Run(action, func(t *testing.T) {
			sp := openSpool(t)
			const total = 300
			spoolQueued(t, sp, total, 2)
			q := New(sp, &fakeDialer{}, Options{Logger: slog.New(slog.DiscardHandler)})
			q.stepRecipients = 100
			if n, err := q.Load(); n != total || err != nil {
				t.Fatalf("Load = %d, %v", n, err)
			}
			if action == "release" {
				if n, err := q.Hold(Target{}, "k"); n != total || err != nil {
					t.Fatalf("Hold = %d, %v", n, err)
				}
			}
			var gone string
			for k := range spoolKeys(t, sp) {
				gone = k
				break
			}
			id, idx, _ := strings.Cut(gone, "/")
			b := sp.NewBatch()
			b.DeleteRecipient(id, int(idx[0]-'0'))
			if err := b.Commit(true); err != nil {
				t.Fatal(err)
			}
			act := q.Hold
			if action == "release" {
				act = q.Release
			}
			n, err := act(Target{}, "k")
			if err != nil || n < total-3 || n >= total {
				t.Fatalf("%s = %d, %v; want all but the missing message's recipients", action, n, err)
			}
			all := spoolKeys(t, sp)
			if h := heldKeys(q); !maps.Equal(h, only(all)) || (action == "hold") != (len(h) == n) {
				t.Fatalf("after the %s: held in the index %d, in the spool %d", action, len(h), len(only(all)))
			}
		})
	}
}
