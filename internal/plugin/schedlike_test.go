package plugin

import (
	"context"
	"log/slog"
	"strings"
	"testing"
)

// TestPluginLinesLikeSchedTraceLogged: lines a plugin writes to os.Stderr
// once served (go-plugin carries them over gRPC, not through the process's
// stderr, where the runtime writes) reach the log even when they look like
// the runtime's scheduler trace.
func TestPluginLinesLikeSchedTraceLogged(t *testing.T) {
	s, lb := start(t, "schedlike", Options{})
	if _, err := s.OnMessage(context.Background(), message(t, "x")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the plugin's lines in the log", func() bool {
		return strings.Contains(lb.String(), "is what the plugin counted") && strings.Contains(lb.String(), "the plugin's own line")
	})
}

// TestSchedFilterLongLines: a scheduler trace line longer than maxLogLine
// is dropped whole (not its tail logged as a line), the detail lines after
// it too, and a long line of the plugin's after the trace is logged
// truncated, as without the filter.
func TestSchedFilterLongLines(t *testing.T) {
	lb := &logBuf{}
	w := &lineLogger{log: slog.New(slog.NewTextHandler(lb, nil)), stream: "stderr", sched: schedFilter{on: true}}
	long := "SCHED 1ms: gomaxprocs=2 runqueue=0 [" + strings.Repeat(" 0", maxLogLine) + " ]\n"
	for _, s := range []string{long[:100], long[100:], "  P0: status=1\n  G1: status=2(running) m=0 lockedm=nil\n",
		"panic: " + strings.Repeat("x", 2*maxLogLine) + "\n", "goroutine 1 [running]:\n"} {
		w.Write([]byte(s))
	}
	log := lb.String()
	if strings.Contains(log, "gomaxprocs") || strings.Contains(log, " 0 0") || strings.Contains(log, "status=") {
		t.Errorf("trace logged:\n%s", log)
	}
	if !strings.Contains(log, `line="panic: xxx`) || !strings.Contains(log, "truncated=true") || !strings.Contains(log, `line="goroutine 1 [running]:"`) {
		t.Errorf("the panic is not logged as without the filter:\n%s", log)
	}
}

// TestPluginChildrenWithoutSluiceSchedtrace: the Go SDK takes the
// schedtrace Sluice added out of the plugin's environment, so that the
// processes it starts do not print the runtime's scheduler trace; what
// the stage's env set stays.
func TestPluginChildrenWithoutSluiceSchedtrace(t *testing.T) {
	for _, tt := range []struct {
		env  []string
		want string
	}{
		{nil, "unset"},
		{[]string{"GODEBUG=madvdontneed=1"}, "set:madvdontneed=1"},
		{[]string{"GODEBUG=schedtrace=0"}, "set:schedtrace=0"},
	} {
		s, _ := start(t, "godebug", Options{Env: tt.env})
		v, err := s.OnMessage(context.Background(), message(t, "x"))
		if got, _ := header(v, "X-Godebug"); err != nil || got != tt.want {
			t.Errorf("env %q: the plugin's children get GODEBUG %q (%v), want %q", tt.env, got, err, tt.want)
		}
		s.Close()
	}
}
