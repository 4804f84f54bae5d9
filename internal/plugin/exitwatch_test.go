package plugin

import (
	"context"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestIdleExitNoticedAtOnce: an idle plugin killed with SIGKILL is
// restarted without a call failing first and without a health check: the
// health check interval is an hour, so neither could have found the exit.
func TestIdleExitNoticedAtOnce(t *testing.T) {
	for _, streaming := range []bool{true, false} {
		t.Run("streaming="+strconv.FormatBool(streaming), func(t *testing.T) {
			var env []string
			if !streaming {
				env = []string{"FAULTY_UNARY=1"}
			}
			s, lb := start(t, "ok", Options{Env: env, HealthInterval: time.Hour})
			if got := s.Describe().Streaming; got != streaming {
				t.Fatalf("Describe().Streaming = %v, want %v", got, streaming)
			}
			pid := s.PID()
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			// No call is made until the restart is seen.
			waitFor(t, "the killed plugin to be restarted", func() bool { p := s.PID(); return p != 0 && p != pid })
			log := lb.String()
			if !strings.Contains(log, "plugin failed; restarting") || strings.Contains(log, "health check failed") {
				t.Fatalf("restart not from the exit watch:\n%s", log)
			}
			v, err := s.OnMessage(context.Background(), message(t, "x"))
			if got, _ := header(v, "X-Plugin-Pid"); err != nil || got != strconv.Itoa(s.PID()) {
				t.Fatalf("after restart: %v %v", v, err)
			}
		})
	}
}
