package events

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// ackTimer wraps a sink and records, per outbox seq, when the sink
// acknowledged it.
type ackTimer struct {
	Sink
	mu   sync.Mutex
	acks map[uint64]time.Time
}

func (a *ackTimer) Write(ctx context.Context, batch []Event) error {
	if err := a.Sink.Write(ctx, batch); err != nil {
		return err
	}
	now := time.Now()
	a.mu.Lock()
	for _, e := range batch {
		a.acks[e.Seq] = now
	}
	a.mu.Unlock()
	return nil
}

func (a *ackTimer) n() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.acks)
}

// BenchmarkKafkaSink measures the Kafka sink through the exporter
// against an in-process broker (kfake, 3 partitions per topic) over TCP:
// events are committed to the spool's outbox by one goroutine (100 per
// commit, like a busy relay), exported and published with acks=all.
// "max" commits as fast as it can (events/s is the sink's throughput);
// "rate=20000" offers 20,000 events/s (the target load) and reports the
// p99 and p50 time from outbox commit to broker ack. 1 in 4 events is a
// bounce, published on two topics.
//
//	go test -run '^$' -bench BenchmarkKafkaSink -benchtime 100000x ./internal/events
func BenchmarkKafkaSink(b *testing.B) {
	for _, rate := range []int{0, 20000} {
		name := "max"
		if rate > 0 {
			name = fmt.Sprintf("rate=%d", rate)
		}
		b.Run(name, func(b *testing.B) { benchKafka(b, rate) })
	}
}

func benchKafka(b *testing.B, rate int) {
	dir := b.TempDir()
	_, addr := startKafka(b, kfake.SeedTopics(3, tDelivery, tBounce, tDeferred))
	sp, err := spool.Open(filepath.Join(dir, "spool"), spool.Options{Node: "n"})
	if err != nil {
		b.Fatal(err)
	}
	defer sp.Close()
	log := slog.New(slog.DiscardHandler)
	ks := newKafkaSink(b, addr, dir, nil, log, nil)
	at := &ackTimer{Sink: ks, acks: map[uint64]time.Time{}}
	ex, err := NewExporter(sp, []Sink{at}, Options{Logger: log})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go ex.Run(ctx)
	defer func() { cancel(); <-ex.Done() }()

	const perCommit = 100
	commits := make(map[uint64]time.Time, b.N)
	first := sp.OutboxHead()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i += perCommit {
		if rate > 0 {
			// Pace: commit i is due at start + i/rate.
			if d := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))); d > 0 {
				time.Sleep(d)
			}
		}
		bt := sp.NewBatch()
		k := min(perCommit, b.N-i)
		for j := i; j < i+k; j++ {
			typ := pipeline.EventDelivered
			if j%4 == 3 {
				typ = pipeline.EventBounced
			}
			bt.AddEvent(&pipeline.Event{Type: typ, MessageID: fmt.Sprintf("01JBENCH%010d", j/3), Recipient: "bob@example.org",
				Sender: "app@example.com", Source: "smtp", Queue: "example.org", Attempt: 1,
				Response: &pipeline.Response{Code: 250, Enhanced: "2.0.0", Text: "OK queued as 12345"}, Size: 2048})
		}
		if err := bt.Commit(false); err != nil {
			b.Fatal(err)
		}
		now := time.Now()
		for q := uint64(0); q < uint64(k); q++ {
			commits[first+uint64(i)+q] = now
		}
	}
	for at.n() < b.N {
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	lat := make([]time.Duration, 0, b.N)
	at.mu.Lock()
	for q, c := range commits {
		lat = append(lat, at.acks[q].Sub(c))
	}
	at.mu.Unlock()
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
}
