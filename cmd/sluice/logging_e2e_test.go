package main

import (
	"strings"
	"testing"
)

// TestLoggingLevelsEndToEnd, against the real binary: sluice.logging's
// per-subsystem levels apply (queue at warn drops the per-recipient
// "delivery outcome" lines, smtp at debug keeps its info lines, among them
// the one line of a refusal go-smtp answered itself), and the command
// line's --log-level (debug, from the harness) wins over the file's level.
func TestLoggingLevelsEndToEnd(t *testing.T) {
	h, key, _ := newQueueEnv(t, `sluice.logging { level = "error", levels = { queue = "warn", smtp = "debug" } }`)
	h.postMessage(key, "a@smart.test")
	waitFor(t, "the message delivered", func() bool { return h.smart.count() == 1 })
	s := dialRaw(t, h.relay.smtp)
	if r := s.cmd("FROB"); !strings.HasPrefix(r, "500") {
		t.Fatalf("FROB: %q", r)
	}
	s.cmd("QUIT")
	waitFor(t, "the refusal logged", func() bool { return strings.Contains(h.relay.logText(), `msg="command refused"`) })
	logs := h.relay.logText()
	if strings.Contains(logs, `msg="delivery outcome"`) {
		t.Errorf("queue = \"warn\" let the delivery outcome lines through:\n%s", logs)
	}
	for _, want := range []string{`msg="smtp listener started"`, `msg="sluice started"`, `text="Syntax errors, FROB command unrecognized"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s:\n%s", want, logs)
		}
	}
	if n := strings.Count(logs, `msg="command refused"`); n != 1 {
		t.Errorf("%d command refused lines, want 1", n)
	}
}
