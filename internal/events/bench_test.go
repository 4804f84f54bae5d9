package events

import (
	"context"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

type countSink struct{ n atomic.Int64 }

func (c *countSink) Name() string { return "count" }
func (c *countSink) Write(ctx context.Context, batch []Event) error {
	c.n.Add(int64(len(batch)))
	return nil
}
func (c *countSink) Close() error { return nil }

// BenchmarkExport measures the export path alone: b.N events already in
// the outbox are read, handed to a sink that only counts them, and pruned.
func BenchmarkExport(b *testing.B) {
	for _, hooks := range []bool{false, true} {
		name := "sink"
		if hooks {
			name = "sink+on_event"
		}
		b.Run(name, func(b *testing.B) {
			sp, err := spool.Open(filepath.Join(b.TempDir(), "spool"), spool.Options{Node: "n"})
			if err != nil {
				b.Fatal(err)
			}
			defer sp.Close()
			for i := 0; i < b.N; i += 100 {
				bt := sp.NewBatch()
				for j := i; j < i+100 && j < b.N; j++ {
					bt.AddEvent(&pipeline.Event{Type: pipeline.EventDelivered, MessageID: sp.NewID(), Recipient: "bob@example.org",
						Sender: "app@example.com", Source: "smtp", Queue: "example.org", Attempt: 1,
						Response: &pipeline.Response{Code: 250, Enhanced: "2.0.0", Text: "OK"}, Size: 2048})
				}
				if err := bt.Commit(false); err != nil {
					b.Fatal(err)
				}
			}
			sink := &countSink{}
			var hooked atomic.Int64
			var onEvent func(context.Context, *pipeline.Event)
			if hooks {
				onEvent = func(context.Context, *pipeline.Event) { hooked.Add(1) }
			}
			b.ResetTimer()
			start := time.Now()
			ex, err := NewExporter(sp, []Sink{sink}, Options{OnEvent: onEvent, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			go ex.Run(ctx)
			var sinkDone time.Duration
			for sink.n.Load() < int64(b.N) || (hooks && hooked.Load() < int64(b.N)) {
				if sinkDone == 0 && sink.n.Load() >= int64(b.N) {
					sinkDone = time.Since(start)
				}
				time.Sleep(time.Millisecond)
			}
			b.StopTimer()
			if sinkDone == 0 {
				sinkDone = time.Since(start)
			}
			// How long the sink waited for its events: with on_event
			// hooks, whether they hold the sink back.
			b.ReportMetric(float64(sinkDone.Nanoseconds())/float64(b.N), "sink-ns/op")
			cancel()
			<-ex.Done()
		})
	}
}
