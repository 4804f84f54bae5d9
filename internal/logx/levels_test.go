package logx

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// Per-subsystem levels: a subsystem's level overrides the base for its
// loggers (and those derived from them), others follow the base; Set
// swaps them at run time; a pinned base survives Set.
func TestLevels(t *testing.T) {
	var buf bytes.Buffer
	h, lv := NewHandler(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}), slog.LevelInfo)
	root := slog.New(h)
	queue := root.With("component", "queue")
	smtp := root.With("component", "smtp", "listener", "mx")
	stage := root.With("stage", "policy")
	if Of(queue) != lv || Of(slog.Default()) != nil {
		t.Fatal("Of")
	}
	debug, warn := slog.LevelDebug, slog.LevelWarn
	lv.Set(nil, map[string]slog.Level{"queue": debug, "smtp": warn, "stages": debug})
	root.Debug("root-debug")
	root.Info("root-info")
	queue.Debug("queue-debug")
	queue.WithGroup("g").With("x", 1).Debug("queue-derived-debug")
	smtp.Info("smtp-info")
	smtp.Warn("smtp-warn")
	stage.Debug("stage-debug")
	out := buf.String()
	for _, want := range []string{"root-info", "queue-debug", "queue-derived-debug", "smtp-warn", "stage-debug"} {
		if !strings.Contains(out, want) {
			t.Errorf("%s not logged:\n%s", want, out)
		}
	}
	for _, not := range []string{"root-debug", "smtp-info"} {
		if strings.Contains(out, not) {
			t.Errorf("%s logged:\n%s", not, out)
		}
	}
	buf.Reset()
	lv.Set(&warn, nil)
	root.Info("after-set-info")
	queue.Debug("after-set-queue-debug")
	lv.Pin()
	lv.Set(&debug, nil)
	root.Debug("pinned-debug")
	if buf.Len() != 0 {
		t.Errorf("logged after Set: %s", buf.String())
	}
}
