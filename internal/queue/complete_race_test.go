package queue

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// gateDialer holds every first attempt of a recipient until the test
// releases it (arrived, then a token on release), so that deliveries to
// two destinations can be made to settle at the same moment. fail gives a
// recipient's first reply (nil: accepted); later attempts are accepted
// at once.
type gateDialer struct {
	arrived chan string
	release chan struct{}
	mu      sync.Mutex
	fail    map[string]error
	tried   map[string]bool
}

func newGateDialer() *gateDialer {
	return &gateDialer{arrived: make(chan string, 16), release: make(chan struct{}, 16), fail: map[string]error{}, tried: map[string]bool{}}
}

func (g *gateDialer) Dial(context.Context, *pipeline.Route, string) (Conn, error) {
	return gateConn{g}, nil
}

type gateConn struct{ g *gateDialer }

func (c gateConn) Deliver(ctx context.Context, env *delivery.Envelope, _ []byte) ([]delivery.Result, error) {
	g := c.g
	out := make([]delivery.Result, len(env.Rcpts))
	for i, rc := range env.Rcpts {
		g.mu.Lock()
		first := !g.tried[rc.Addr]
		g.tried[rc.Addr] = true
		err := g.fail[rc.Addr]
		g.mu.Unlock()
		if first {
			g.arrived <- rc.Addr
			<-g.release
			out[i].Err = err
		}
		out[i].Reply = pipeline.ResponseOf(out[i].Err)
	}
	return out, nil
}
func (gateConn) Remote() pipeline.Remote { return pipeline.Remote{Host: "mx.test", IP: "127.0.0.1"} }
func (gateConn) Usable() bool            { return true }
func (gateConn) Close() error            { return nil }

// gatedQueue starts a queue on a new spool that delivers through a
// gateDialer; both stop at the end of the test.
func gatedQueue(t *testing.T, o Options) (*spool.Spool, *gateDialer, *Queue) {
	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	g := newGateDialer()
	q := newQueue(sp, g, fakeBouncer{}, o)
	q.Start()
	t.Cleanup(func() { q.Stop(context.Background()) })
	return sp, g, q
}

// putOneWaiting queues a message for a (due now) and b (due in an hour).
func putOneWaiting(t *testing.T, sp *spool.Spool, q *Queue, a, b string) *spool.Meta {
	m, rs := put(t, sp, "", a, b)
	rs[1].NextAttempt = time.Now().Add(time.Hour)
	bt := sp.NewBatch()
	_ = bt.PutRecipient(rs[1])
	if err := bt.Commit(false); err != nil {
		t.Fatal(err)
	}
	q.Enqueue(m, rs)
	return m
}

// settled reports whether the queue forgot message id and the spool
// deleted it.
func settled(q *Queue, sp *spool.Spool, id string) bool {
	_, err := sp.Body(id)
	return q.Stats().Messages == 0 && err != nil
}

func queuedRecipients(t *testing.T, sp *spool.Spool) int {
	t.Helper()
	n := 0
	if err := sp.ScanRecipients(func(*spool.Meta, *spool.Recipient) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func sortedEvents(t *testing.T, sp *spool.Spool, id string) string {
	evs := events(t, sp, id)
	slices.Sort(evs)
	return strings.Join(evs, " ")
}

// TestTwoDestinationsSettleTogether (issue 21 review): a message's
// recipients on two destinations settle at the same moment, many times.
// Exactly one of the two deletes the message (neither thinks it is the
// last too early: a message with a deferred recipient keeps its body;
// neither fails to: every settled message is gone from the spool).
func TestTwoDestinationsSettleTogether(t *testing.T) {
	sp, g, q := gatedQueue(t, Options{RetryInitial: time.Millisecond, RetryMax: time.Millisecond})
	for round := 0; round < 40; round++ {
		a, b := "a"+strings.Repeat("x", round)+"@a.test", "b"+strings.Repeat("x", round)+"@b.test"
		deferB := round%2 == 1
		if deferB {
			g.mu.Lock()
			g.fail[b] = temp
			g.mu.Unlock()
		}
		m, rs := put(t, sp, "", a, b)
		q.Enqueue(m, rs)
		<-g.arrived
		<-g.arrived
		g.release <- struct{}{}
		g.release <- struct{}{}
		// The queue forgets the message before the batch that deletes it
		// (when neither settlement was the whole message) commits.
		testutil.WaitFor(t, "the message settled and deleted (both destinations settled)", func() bool { return settled(q, sp, m.ID) })
		want := "delivered:" + a + " delivered:" + b
		if deferB {
			want = "deferred:" + b + " " + want
		}
		if got := sortedEvents(t, sp, m.ID); !strings.Contains(got, "delivered:"+a) || !strings.Contains(got, "delivered:"+b) {
			t.Fatalf("round %d: events %q, want %q", round, got, want)
		}
	}
	if n := queuedRecipients(t, sp); n != 0 {
		t.Fatalf("%d recipients left in the spool", n)
	}
}

// TestCancelRacesCompletion (issue 21 review): an operator cancels a
// message while its recipient on another destination is being delivered
// and settles. Whichever settles last deletes the message; the spool
// ends with neither recipient nor message, and the events say delivered
// and cancelled.
func TestCancelRacesCompletion(t *testing.T) {
	raceWithCompletion(t, "cancelled", func(q *Queue, tg Target) {
		if n, err := q.Cancel(tg, "op"); err != nil && n != 0 {
			t.Errorf("cancel: %d, %v", n, err)
		}
	})
}

// TestHoldReleaseRetryRaceCompletion (issue 21 review): hold, release and
// retry of a message race the completion of its recipient on another
// destination. The waiting recipient is then retried and delivered, and
// the last of the two to settle deletes the message: nothing is left.
func TestHoldReleaseRetryRaceCompletion(t *testing.T) {
	raceWithCompletion(t, "delivered", func(q *Queue, tg Target) {
		_, _ = q.Hold(tg, "op")
		_, _ = q.Release(tg, "op")
		if _, err := q.Retry(tg, "op"); err != nil {
			t.Errorf("retry: %v", err)
		}
	})
}

// raceWithCompletion runs act on a message of two recipients, a being
// delivered and b waiting, at the moment a settles, 30 times. b must end
// with an event of type bEvent (when "delivered", act made it due: its
// attempt is let through the gate) and the message deleted from the
// spool with nothing left of it.
func raceWithCompletion(t *testing.T, bEvent string, act func(*Queue, Target)) {
	sp, g, q := gatedQueue(t, Options{})
	for round := 0; round < 30; round++ {
		a, b := fmt.Sprintf("a%d@a.test", round), fmt.Sprintf("b%d@b.test", round)
		m := putOneWaiting(t, sp, q, a, b)
		<-g.arrived // a in flight
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); act(q, Target{MessageID: m.ID}) }()
		g.release <- struct{}{}
		wg.Wait()
		if bEvent == "delivered" {
			<-g.arrived // b, made due by act
			g.release <- struct{}{}
		}
		// The queue forgets the message before the batch that deletes it
		// (when neither settlement was the whole message) commits.
		testutil.WaitFor(t, "the message settled and deleted", func() bool { return settled(q, sp, m.ID) })
		if got := sortedEvents(t, sp, m.ID); !strings.Contains(got, "delivered:"+a) || !strings.Contains(got, bEvent+":"+b) {
			t.Fatalf("round %d: events %q", round, got)
		}
	}
	if n := queuedRecipients(t, sp); n != 0 {
		t.Fatalf("%d recipients left in the spool", n)
	}
}
