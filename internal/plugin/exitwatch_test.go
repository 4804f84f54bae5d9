package plugin

import (
	"context"
	"path/filepath"
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

// TestSocketDirRemoved: each plugin process gets its gRPC socket in a
// directory of its own, removed when the process is killed and replaced,
// and when the stage closes: killed plugins leave nothing behind in the
// temp directory (each used to leave a socket file there).
func TestSocketDirRemoved(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	dirs := func() []string {
		m, _ := filepath.Glob(filepath.Join(tmp, "sluice-plugin-*"))
		return m
	}
	s, _ := start(t, "ok", Options{HealthInterval: time.Hour})
	first := dirs()
	if len(first) != 1 {
		t.Fatalf("socket directories while one plugin runs: %v", first)
	}
	if socks, _ := filepath.Glob(filepath.Join(first[0], "*")); len(socks) != 1 {
		t.Fatalf("the plugin's directory holds %v, want its socket", socks)
	}
	pid := s.PID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the killed plugin to be restarted", func() bool { p := s.PID(); return p != 0 && p != pid })
	waitFor(t, "the killed plugin's directory to go", func() bool { d := dirs(); return len(d) == 1 && d[0] != first[0] })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if d := dirs(); len(d) != 0 {
		t.Fatalf("left after Close: %v", d)
	}
	if rest, _ := filepath.Glob(filepath.Join(tmp, "plugin*")); len(rest) != 0 {
		t.Fatalf("sockets left in the temp directory: %v", rest)
	}
}
