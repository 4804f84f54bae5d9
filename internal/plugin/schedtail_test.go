package plugin

import (
	"log/slog"
	"strings"
	"testing"
)

// TestStartCrashQuotesPanicNotSchedTrace: a Go plugin that panics before
// its handshake, with many goroutines, prints the runtime's scheduler
// state (a line per goroutine: Sluice set GODEBUG's schedtrace) and then
// the panic. The start error quotes the panic, not that state, even when
// the quoted tail begins inside it (its SCHED line cut off).
func TestStartCrashQuotesPanicNotSchedTrace(t *testing.T) {
	lb := &logBuf{}
	_, err := Start(Options{Name: "t", Cmd: faultyBin, Args: []string{"panicstart"},
		Logger: slog.New(slog.NewTextHandler(lb, nil))})
	if err == nil {
		t.Fatal("Start succeeded")
	}
	msg := err.Error()
	if !strings.Contains(msg, "panic: cannot start") || !strings.Contains(msg, "goroutine 1 [running]") {
		t.Errorf("the panic is not quoted:\n%s", msg)
	}
	for _, trace := range []string{"gomaxprocs=", "status=", "lockedm=", "curg="} {
		if strings.Contains(msg, trace) {
			t.Errorf("the start error quotes the scheduler trace (%q):\n%s", trace, msg)
		}
		if strings.Contains(lb.String(), trace) {
			t.Errorf("the log has the scheduler trace (%q):\n%s", trace, lb)
		}
	}
}
