package plugin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// closeWithin closes s, failing the test when Close has not returned
// after bound (a hang check, not a speed assertion).
func closeWithin(t *testing.T, s *Stage, bound time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		s.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(bound):
		t.Fatalf("Close still blocked after %v", bound)
	}
}

// freeze stops process pid with SIGSTOP and waits until every thread of
// it is stopped: the signal takes effect asynchronously, and a call made
// at once could still be answered (a call takes well under a
// millisecond).
func freeze(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every thread of the plugin to stop", func() bool {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil || len(tasks) == 0 {
			return false
		}
		for _, task := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
			if err != nil {
				return false
			}
			f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
			if len(f) == 0 || f[0] != "T" {
				return false
			}
		}
		return true
	})
}

// TestFrozenPluginRestarts: a SIGSTOPped plugin never answers go-plugin's
// graceful shutdown; the supervisor must kill it, start a new process,
// and Close must not hang on a frozen one either.
func TestFrozenPluginRestarts(t *testing.T) {
	s, lb := start(t, "ok", Options{HealthInterval: 50 * time.Millisecond, Timeout: 300 * time.Millisecond})
	pid := s.PID()
	freeze(t, pid)
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	// Calls meanwhile follow on_error (tempfail): a CallError.
	_, err := s.OnMessage(context.Background(), message(t, "x"))
	var ce *CallError
	if !errors.As(err, &ce) {
		t.Fatalf("call to a frozen plugin: %T %v, want a *CallError", err, err)
	}
	waitFor(t, "a new process to replace the frozen one", func() bool { p := s.PID(); return p != 0 && p != pid })
	waitFor(t, "the frozen process to be killed", func() bool { return !alive(pid) })
	v, err := s.OnMessage(context.Background(), message(t, "x"))
	if got, _ := header(v, "X-Plugin-Pid"); err != nil || got != strconv.Itoa(s.PID()) {
		t.Fatalf("after the restart: %v %v\nlog:\n%s", v, err, lb)
	}
	// Freeze the new one and close: Close kills it after the grace period.
	pid2 := s.PID()
	freeze(t, pid2)
	closeWithin(t, s, killGrace+reapWait+5*time.Second)
	if alive(pid2) {
		t.Fatalf("frozen plugin %d still alive after Close", pid2)
	}
	if !strings.Contains(lb.String(), "killing its process group") {
		t.Errorf("no report of the forced kill in the log:\n%s", lb)
	}
}

// TestUnavailableIsCallFailure: a live plugin that returns UNAVAILABLE
// (its backend is down) fails the call (on_error, with its message in the
// log) but is not restarted.
func TestUnavailableIsCallFailure(t *testing.T) {
	s, lb := start(t, "unavailable", Options{OnError: OnErrorContinue})
	pid := s.PID()
	for i := 0; i < 5; i++ {
		v, err := s.OnMessage(context.Background(), message(t, "x"))
		if err != nil || len(v.Edits.Headers) != 0 {
			t.Fatalf("call %d under on_error=continue: %v %v", i, v, err)
		}
	}
	sl := s.g.slots[0]
	waitFor(t, "the connection probe to finish", func() bool { return !sl.probing.Load() })
	if got := s.PID(); got != pid {
		t.Fatalf("plugin restarted (pid %d -> %d) for a status it returned\nlog:\n%s", pid, got, lb)
	}
	log := lb.String()
	if strings.Contains(log, "restarting") {
		t.Errorf("a restart was logged:\n%s", log)
	}
	if n := strings.Count(log, "tenant database unreachable"); n != 5 {
		t.Errorf("plugin's message logged %d times, want 5:\n%s", n, log)
	}
	// A broken connection still counts as one: kill the plugin and call.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	s.OnMessage(context.Background(), message(t, "x"))
	waitFor(t, "a restart after the kill", func() bool { p := s.PID(); return p != 0 && p != pid })
}

func readPid(t *testing.T, file string) int {
	t.Helper()
	var pid int
	waitFor(t, "the plugin's child pid in "+file, func() bool {
		b, err := os.ReadFile(file)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(string(b))
		return err == nil
	})
	return pid
}

// TestChildrenDoNotOutliveThePlugin: a plugin that forks (sleep 1000);
// a restart and Close end the child with the plugin (process group).
func TestChildrenDoNotOutliveThePlugin(t *testing.T) {
	file := filepath.Join(t.TempDir(), "child")
	s, _ := start(t, "children", Options{HealthInterval: 50 * time.Millisecond, Env: []string{"FAULTY_CHILD_FILE=" + file}})
	child := readPid(t, file)
	t.Cleanup(func() { syscall.Kill(child, syscall.SIGKILL) })
	if !alive(child) {
		t.Fatalf("child %d not running", child)
	}
	os.Remove(file)
	pid := s.PID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a restarted plugin", func() bool { p := s.PID(); return p != 0 && p != pid })
	waitFor(t, "the crashed plugin's child to be killed", func() bool { return !alive(child) })
	child2 := readPid(t, file)
	t.Cleanup(func() { syscall.Kill(child2, syscall.SIGKILL) })
	if !alive(child2) {
		t.Fatalf("new child %d not running", child2)
	}
	closeWithin(t, s, killGrace+reapWait+5*time.Second)
	waitFor(t, "the child to be killed at Close", func() bool { return !alive(child2) })
}

// TestStartFailureQuotesStderr: a plugin that fails at start has the end
// of its stderr (bounded) and its exit status in Start's error, which is
// what sluice check prints.
func TestStartFailureQuotesStderr(t *testing.T) {
	_, err := Start(Options{Name: "t", Cmd: faultyBin, Args: []string{"stderrexit"},
		Logger: slog.New(slog.NewTextHandler(&logBuf{}, nil))})
	if err == nil {
		t.Fatal("Start succeeded")
	}
	msg := err.Error()
	for _, want := range []string{"fatal: cannot open /etc/faulty.conf", "stderr line 300", "exit status 4", "before completing its handshake"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "\nstderr line 1\n") || len(msg) > stderrTail+500 {
		t.Errorf("error quotes more than the last %d bytes (%d bytes):\n%s", stderrTail, len(msg), msg)
	}
	if strings.Contains(msg, "not compiled for this architecture") {
		t.Errorf("go-plugin's misleading advice kept:\n%s", msg)
	}
}

// TestLongOutputLineTruncated: a 100 KiB line of plugin output becomes one
// record of maxLogLine bytes marked truncated; the next lines are intact.
func TestLongOutputLineTruncated(t *testing.T) {
	_, lb := start(t, "longline", Options{})
	waitFor(t, "the short lines in the log", func() bool { return strings.Contains(lb.String(), `short line 10"`) })
	log := lb.String()
	long := strings.Repeat("L", maxLogLine)
	if !strings.Contains(log, "line="+long+" truncated=true") {
		t.Fatalf("no truncated record of %d bytes", maxLogLine)
	}
	if strings.Contains(log, long+"L") {
		t.Fatalf("a record longer than %d bytes", maxLogLine)
	}
	if !strings.Contains(log, "line=\"short line 1\"\n") {
		t.Fatalf("the line after the long one is not intact")
	}
}

func TestLineLoggerPieces(t *testing.T) {
	lb := &logBuf{}
	w := &lineLogger{log: slog.New(slog.NewTextHandler(lb, nil)), stream: "stderr"}
	// A long line in several writes, then a normal one in the same write
	// as the long line's end.
	w.Write([]byte(strings.Repeat("a", maxLogLine-10)))
	w.Write([]byte(strings.Repeat("b", 20)))
	w.Write([]byte(strings.Repeat("c", 5000) + "\nnext\npart"))
	w.Write([]byte("ial\n"))
	got := lb.String()
	want := fmt.Sprintf("line=%s%s truncated=true", strings.Repeat("a", maxLogLine-10), strings.Repeat("b", 10))
	if !strings.Contains(got, want) || strings.Contains(got, "c") && strings.Contains(got, "ccc") {
		t.Fatalf("long line not cut at %d bytes:\n%.300s", maxLogLine, got)
	}
	if !strings.Contains(got, "line=next\n") || !strings.Contains(got, "line=partial\n") {
		t.Fatalf("lines after the long one:\n%s", got[len(got)-200:])
	}
}

func TestOutputLimiter(t *testing.T) {
	o := newOutputLimiter()
	t0 := time.Now()
	passed := 0
	for i := 0; i < outputBurst+100; i++ {
		if ok, _ := o.allow(t0); ok {
			passed++
		}
	}
	if passed != outputBurst {
		t.Fatalf("%d lines passed at once, want the burst %d", passed, outputBurst)
	}
	ok, dropped := o.allow(t0.Add(time.Second))
	if !ok || dropped != 100 {
		t.Fatalf("a second later: ok=%v dropped=%d, want true 100", ok, dropped)
	}
}
