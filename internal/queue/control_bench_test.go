package queue

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// BenchmarkQueuesListing: Queues() over n deferred recipients in 100
// domains (one waiting item each, in the timer heap); ns/op is one whole
// listing, which walks every waiting item under the queue's lock.
//
//	go test -run '^$' -bench QueuesListing -benchtime 20x ./internal/queue
func BenchmarkQueuesListing(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			q := deferredQueue(b, n)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if qs := q.Queues(); len(qs) != 100 || qs[0].Waiting != n/100 {
					b.Fatalf("listing: %d queues, first %+v", len(qs), qs[0])
				}
			}
		})
	}
}

// BenchmarkControlWalk: the control actions' walk of the queue's memory
// (extract) with n deferred recipients in 100 queues: a hold whose
// filter matches nothing (every item examined, nothing written) and the
// queue listing. Default n is 1,000,000 (SLUICE_BENCH_MESSAGES sets it).
//
//	go test -run '^$' -bench ControlWalk -benchtime 10x ./internal/queue
func BenchmarkControlWalk(b *testing.B) {
	n := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("SLUICE_BENCH_MESSAGES")); err == nil && v > 0 {
		n = v
	}
	q := deferredQueue(b, n)
	b.Run("hold_no_match", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if n, err := q.Hold(Target{Filter: spool.ListFilter{RcptDomain: "nowhere.test"}}, "bench"); n != 0 || err != nil {
				b.Fatal(n, err)
			}
		}
	})
	b.Run("hold_sender_no_match", func(b *testing.B) {
		s := "x@b.test"
		for i := 0; i < b.N; i++ {
			if n, err := q.Hold(Target{Filter: spool.ListFilter{Sender: &s}}, "bench"); n != 0 || err != nil {
				b.Fatal(n, err)
			}
		}
	})
	b.Run("queues", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if qs := q.Queues(); len(qs) != 100 {
				b.Fatal(len(qs))
			}
		}
	})
}

// deferredQueue is a queue (not started) holding n deferred recipients,
// one per message, in 100 domains, due in an hour, each in the spool too
// (waiting items are compact: a filter on the sender or a recipient field
// reads them back).
func deferredQueue(b *testing.B, n int) *Queue {
	sp, err := spool.Open(b.TempDir(), spool.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sp.Close() })
	q := New(sp, &fakeDialer{}, Options{Logger: slog.New(slog.DiscardHandler)})
	due := time.Now().Add(time.Hour)
	reply := &pipeline.Response{Code: 451, Enhanced: "4.7.1", Text: "later"}
	bt := sp.NewBatch()
	for i := 0; i < n; i++ {
		d := fmt.Sprintf("d%d.test", i%100)
		m := &spool.Meta{ID: sp.NewID(), Sender: "s@a.test", Received: time.Now(), Size: 4}
		r := &spool.Recipient{MsgID: m.ID, Address: "r@" + d, Domain: d, Route: pipeline.MX(),
			Attempts: 1, NextAttempt: due, LastReply: reply}
		_ = bt.PutMessage(m, []byte("x"))
		_ = bt.PutRecipient(r)
		if i%5000 == 4999 || i == n-1 {
			if err := bt.Commit(false); err != nil {
				b.Fatal(err)
			}
			bt = sp.NewBatch()
		}
		q.Enqueue(m, []*spool.Recipient{r})
	}
	return q
}
