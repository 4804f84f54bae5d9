package plugin

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

// TestInlinePanicRestarts: a hook that panics on the receiving goroutine
// ends the process as on a worker; calls get on_error, the plugin is
// restarted and answers again.
func TestInlinePanicRestarts(t *testing.T) {
	s, lb := start(t, "panic10", Options{Env: []string{"FAULTY_INLINE=1"}, OnError: OnErrorContinue})
	pids := map[string]bool{}
	for i := 0; len(pids) < 3; i++ {
		if i > 200 {
			t.Fatalf("%d calls, answered by %d processes", i, len(pids))
		}
		v, err := s.OnMessage(context.Background(), message(t, "x"))
		if err != nil {
			t.Fatal(err)
		}
		if p, ok := header(v, "X-Plugin-Pid"); ok {
			pids[p] = true
		} else {
			time.Sleep(5 * time.Millisecond) // restarting
		}
	}
	if !strings.Contains(lb.String(), "panic: message 10") {
		t.Errorf("the panic did not reach the log:\n%s", lb)
	}
}

// TestInlineBlockedHookHoldsOthers: the documented cost of
// sdk.WithInlineCalls: while a hook waits, the calls behind it wait too
// (and end at their deadline with on_error), where with the SDK's workers
// they are answered; once the hook returns, the same process answers
// again (no deadlock, no restart before hangLimit).
func TestInlineBlockedHookHoldsOthers(t *testing.T) {
	for _, inline := range []bool{false, true} {
		s, _ := start(t, "ok", Options{Env: inlineEnv(inline), OnError: OnErrorContinue, Timeout: 300 * time.Millisecond})
		pid := strconv.Itoa(s.PID())
		wait, done := waitingHook(t, s)
		v, err := s.OnMessage(context.Background(), message(t, "behind"))
		if err != nil {
			t.Fatal(err)
		}
		if got, answered := header(v, "X-Plugin-Pid"); answered == inline {
			t.Errorf("inline %v: the call behind a waiting hook answered %v (pid %q)", inline, answered, got)
		}
		<-done // its deadline
		if err := os.WriteFile(wait, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the plugin to answer again", func() bool {
			v, err := s.OnMessage(context.Background(), message(t, "after"))
			got, _ := header(v, "X-Plugin-Pid")
			return err == nil && got == pid
		})
		s.Close()
	}
}

// TestInlineWaitingHookRestarts: with sdk.WithInlineCalls, one hook that
// waits past the timeout makes the calls behind it miss their deadline
// too, and hangLimit of them in a row restart the plugin (docs/plugins.md,
// "Cheap hooks run inline"); with the SDK's workers the calls behind it
// are answered and the process stays.
func TestInlineWaitingHookRestarts(t *testing.T) {
	for _, inline := range []bool{false, true} {
		s, _ := start(t, "ok", Options{Env: inlineEnv(inline), OnError: OnErrorContinue, Timeout: 200 * time.Millisecond})
		pid := s.PID()
		wait, done := waitingHook(t, s)
		for i := 1; i < hangLimit; i++ {
			v, err := s.OnMessage(context.Background(), message(t, "behind"))
			if _, answered := header(v, "X-Plugin-Pid"); err != nil || answered == inline {
				t.Fatalf("inline %v: call %d behind the waiting hook: answered %v, %v", inline, i, answered, err)
			}
		}
		<-done
		if inline {
			waitFor(t, "a new process", func() bool { p := s.PID(); return p != 0 && p != pid })
		} else if p := s.PID(); p != pid {
			t.Errorf("workers: the plugin was restarted (pid %d, was %d)", p, pid)
		}
		os.WriteFile(wait, nil, 0o644)
		s.Close()
	}
}

// inlineEnv is the faulty plugin's environment for sdk.WithInlineCalls.
func inlineEnv(inline bool) []string {
	if inline {
		return []string{"FAULTY_INLINE=1"}
	}
	return nil
}

// waitingHook starts a call on s whose hook waits (ignoring its context)
// until the file wait exists; done is closed when the call returned.
func waitingHook(t *testing.T, s *Stage) (wait string, done <-chan struct{}) {
	t.Helper()
	wait = filepath.Join(t.TempDir(), "go")
	blocked, err := pipeline.ParseMessage(&pipeline.Txn{Conn: &pipeline.Conn{ID: "c"}, ID: "m0", Sender: "a@x.example"},
		[]byte("X-Wait-File: "+wait+"\r\nSubject: wait\r\n\r\nbody\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan struct{})
	go func() { defer close(ch); s.OnMessage(context.Background(), blocked) }()
	waitFor(t, "the hook to wait", func() bool { _, err := os.Stat(wait + ".started"); return err == nil })
	return wait, ch
}
