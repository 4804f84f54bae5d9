package queue

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// BenchmarkDeliveryShaping: b.N one-recipient messages through the queue
// (real spool, no fsync on outcomes as in production, a fake connection),
// with shaping off (the default path) and on (a site rate that never
// binds, so every message takes a lease and a limiter token). ns/op is
// per message delivered and recorded.
//
//	go test -run '^$' -bench DeliveryShaping -benchtime 20000x -count 5 ./internal/queue
func BenchmarkDeliveryShaping(b *testing.B) {
	for _, on := range []bool{false, true} {
		b.Run(map[bool]string{false: "off", true: "on"}[on], func(b *testing.B) {
			sp, err := spool.Open(b.TempDir(), spool.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer sp.Close()
			o := Options{MaxPerDestination: 10, MaxMessagesPerConn: 1000, IdleTimeout: time.Second, Logger: slog.New(slog.DiscardHandler)}
			if on {
				o.Shaper = newShaper(b, "[\"default\"]\nconnection_limit = 10\nmax_deliveries_per_connection = 1000\nmax_message_rate = \"10000000/s,max_burst=1000\"\n")
				o.Shaper.Site(context.Background(), "b.test") // warm the site cache
			}
			type msg struct {
				m  *spool.Meta
				rs []*spool.Recipient
			}
			msgs := make([]msg, b.N)
			batch := sp.NewBatch()
			for i := range msgs {
				m := &spool.Meta{ID: sp.NewID(), Sender: "s@a.test", Source: "smtp", Received: time.Now(), Size: 4}
				_ = batch.PutMessage(m, []byte("data"))
				r := &spool.Recipient{MsgID: m.ID, Address: fmt.Sprintf("r%d@b.test", i), Domain: "b.test", Route: pipeline.MX()}
				_ = batch.PutRecipient(r)
				msgs[i] = msg{m, []*spool.Recipient{r}}
			}
			if err := batch.Commit(false); err != nil {
				b.Fatal(err)
			}
			q := New(sp, &fakeDialer{}, o)
			q.Start()
			defer q.Stop(context.Background())
			b.ResetTimer()
			for _, x := range msgs {
				q.Enqueue(x.m, x.rs)
			}
			testutil.WaitForWithin(b, 5*time.Minute, "delivered", func() bool { return q.Stats().Messages == 0 })
		})
	}
}
