package events

import (
	"context"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/testutil"
)

// Pruning is put off while events flow (pruneSoon), never skipped: events
// exported right after a prune are pruned by the next idle round of the
// exporter, with no further event to export, or by its final drain when
// it stops.
func TestPruneAfterBurst(t *testing.T) {
	sp := openSpool(t, t.TempDir())
	defer sp.Close()
	sink := &recSink{name: "s"}
	ex, err := NewExporter(sp, []Sink{sink}, Options{Poll: 20 * time.Millisecond, Linger: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go ex.Run(ctx)
	defer func() { cancel(); <-ex.Done() }()
	// Back to back: the second export comes well within pruneEvery of
	// the first one's prune.
	for seq := uint64(1); seq <= 2; seq++ {
		commitEvent(t, sp, seq)
		testutil.WaitForWithin(t, 10*time.Second, "the sink to take the event", func() bool { return len(sink.got()) == int(seq) })
	}
	testutil.WaitForWithin(t, 10*time.Second, "the outbox to be pruned past both events", func() bool {
		first, _ := sp.FirstOutboxSeq()
		return first == 3
	})

	// At shutdown: the export right after the exporter's first prune
	// (at Run) is put off, and with no idle round before the stop
	// (Poll an hour) only the final drain's empty round can take it.
	ex2sink := &recSink{name: "s"}
	cancel()
	<-ex.Done()
	commitEvent(t, sp, 3)
	ex2, err := NewExporter(sp, []Sink{ex2sink}, Options{Poll: time.Hour, Linger: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	go ex2.Run(ctx2)
	testutil.WaitForWithin(t, 10*time.Second, "the sink to take the event", func() bool { return len(ex2sink.got()) == 1 })
	cancel2()
	<-ex2.Done()
	if first, _ := sp.FirstOutboxSeq(); first != 4 {
		t.Fatalf("outbox starts at %d after shutdown, want 4", first)
	}
}
