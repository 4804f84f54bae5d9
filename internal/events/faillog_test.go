package events

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/testutil"
)

// A sink that stays down with the same error is logged once, not on every
// retry; recovering logs how many attempts failed.
func TestFailingSinkLogsOnce(t *testing.T) {
	dir := t.TempDir()
	sp := openSpool(t, dir)
	defer sp.Close()
	logs := &logBuf{}
	flaky := &recSink{name: "flaky", failUntil: time.Now().Add(time.Hour)}
	ex, err := NewExporter(sp, []Sink{flaky}, Options{
		BatchSize: 64, RetryInitial: time.Millisecond, RetryMax: 2 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go ex.Run(ctx)
	defer func() { cancel(); <-ex.Done() }()
	commitEvent(t, sp, 1)
	fails := func() int { flaky.mu.Lock(); defer flaky.mu.Unlock(); return flaky.fails }
	testutil.WaitFor(t, "20 failed attempts", func() bool { return fails() >= 20 })
	if n := strings.Count(logs.String(), "event export failed; retrying"); n != 1 {
		t.Fatalf("%d failure lines after %d failed attempts with the same error, want 1:\n%s", n, fails(), logs.String())
	}
	flaky.mu.Lock()
	flaky.failUntil = time.Time{}
	flaky.mu.Unlock()
	testutil.WaitFor(t, "the sink to recover", func() bool { return len(flaky.got()) == 1 })
	testutil.WaitFor(t, "the recovery to be logged", func() bool { return strings.Contains(logs.String(), "event export resumed") })
	if !strings.Contains(logs.String(), "failed_attempts=") {
		t.Fatalf("the recovery line does not say how many attempts failed:\n%s", logs.String())
	}
}
