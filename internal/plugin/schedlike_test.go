package plugin

import (
	"context"
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
