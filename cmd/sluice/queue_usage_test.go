package main

import (
	"strings"
	"testing"
)

// TestQueuePauseNeedsAQueue: pause and resume without a queue say what
// is missing (they said `wrong arguments []`) and exit 2, before any
// request.
func TestQueuePauseNeedsAQueue(t *testing.T) {
	for _, sub := range []string{"pause", "resume"} {
		var out, errOut strings.Builder
		code := runQueue([]string{sub, "--url", "http://127.0.0.1:1", "--key", "sk_x_y"}, &out, &errOut)
		if code != 2 || !strings.Contains(errOut.String(), "name the QUEUE") {
			t.Errorf("queue %s: exit %d, %q", sub, code, errOut.String())
		}
	}
}
