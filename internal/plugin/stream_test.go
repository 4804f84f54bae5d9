package plugin

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

// streamCalls returns the number of calls sent on the first instance's
// Calls stream so far, and whether it has a working stream.
func streamCalls(s *Stage) (uint64, bool) {
	inst := s.g.slots[0].get()
	if inst == nil || inst.mux == nil {
		return 0, false
	}
	m := inst.mux
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.next, m.err == nil
}

// waitMessage is a message that makes the faulty plugin's on_message
// create file.started and wait until file exists.
func waitMessage(t *testing.T, file string) *pipeline.Message {
	m := message(t, "wait")
	m.Header.Add("X-Wait-File", file)
	return m
}

// TestStreamKilledMidCall: a streaming plugin killed while a call is in
// flight on its stream: the call gets on_error, the plugin is restarted,
// and the new process serves over a new stream.
func TestStreamKilledMidCall(t *testing.T) {
	s, _ := start(t, "ok", Options{OnError: OnErrorTempfail, HealthInterval: time.Hour})
	if !s.Describe().Streaming {
		t.Fatal("the SDK plugin does not advertise streaming")
	}
	old := s.g.slots[0].get()
	file := filepath.Join(t.TempDir(), "go")
	type result struct {
		v   pipeline.Verdict
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := s.OnMessage(context.Background(), waitMessage(t, file))
		done <- result{v, err}
	}()
	waitFor(t, "the call to reach the plugin", func() bool { _, err := os.Stat(file + ".started"); return err == nil })
	if n, ok := streamCalls(s); !ok || n != 1 {
		t.Fatalf("the call did not go over the stream: calls %d, stream up %v", n, ok)
	}
	if err := syscall.Kill(old.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	r := <-done
	var ce *CallError
	if !errors.As(r.err, &ce) {
		t.Fatalf("call in flight on a killed plugin: want a CallError (on_error tempfail), got %v %v", r.v, r.err)
	}
	waitFor(t, "a restarted plugin", func() bool { p := s.PID(); return p != 0 && p != old.pid })
	inst := s.g.slots[0].get()
	if inst.mux == nil || inst.mux == old.mux {
		t.Fatalf("the restarted plugin has no new stream (old %p, new %p)", old.mux, inst.mux)
	}
	v, err := s.OnMessage(context.Background(), message(t, "x"))
	if got, _ := header(v, "X-Plugin-Pid"); err != nil || got != strconv.Itoa(inst.pid) {
		t.Fatalf("after restart: %v %v", v, err)
	}
	if n, ok := streamCalls(s); !ok || n != 1 {
		t.Fatalf("the call after the restart did not go over the new stream: calls %d, stream up %v", n, ok)
	}
}

// TestStreamLateAnswerDropped: a call whose deadline passes gets on_error;
// its answer, arriving later, is dropped and not taken for the next call's.
func TestStreamLateAnswerDropped(t *testing.T) {
	s, _ := start(t, "ok", Options{OnError: OnErrorTempfail, Timeout: 200 * time.Millisecond})
	file := filepath.Join(t.TempDir(), "go")
	_, err := s.OnMessage(context.Background(), waitMessage(t, file))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want a deadline error, got %v", err)
	}
	if err := os.WriteFile(file, nil, 0o644); err != nil { // the first call answers now
		t.Fatal(err)
	}
	for i := range 5 {
		v, err := s.OnMessage(context.Background(), message(t, "late"+strconv.Itoa(i)))
		if got, _ := header(v, "X-Subject-Seen"); err != nil || got != "LATE"+strconv.Itoa(i) {
			t.Fatalf("call %d after a late answer: %v %v", i, v, err)
		}
	}
	if n, ok := streamCalls(s); !ok || n != 6 {
		t.Fatalf("calls did not go over the stream: calls %d, stream up %v", n, ok)
	}
}

// TestStreamBrokenFallsBackToUnary: when the stream ends while the plugin
// lives on, calls go as unary RPCs to the same process.
func TestStreamBrokenFallsBackToUnary(t *testing.T) {
	s, _ := start(t, "ok", Options{})
	pid := s.PID()
	s.g.slots[0].get().mux.close()
	for i := range 3 {
		v, err := s.OnMessage(context.Background(), message(t, "x"))
		if got, _ := header(v, "X-Plugin-Pid"); err != nil || got != strconv.Itoa(pid) {
			t.Fatalf("call %d after the stream ended: %v %v", i, v, err)
		}
	}
	if _, ok := streamCalls(s); ok {
		t.Fatal("the stream still counts as up")
	}
}

// TestUnaryPlugin: a Go plugin with streaming disabled (sdk.WithoutStreaming)
// does not advertise it, gets no stream and is served with unary calls,
// including on_error and restarts.
func TestUnaryPlugin(t *testing.T) {
	s, _ := start(t, "panic10", Options{Env: []string{"FAULTY_UNARY=1"}, OnError: OnErrorContinue})
	if s.Describe().Streaming {
		t.Fatal("a plugin served WithoutStreaming advertises streaming")
	}
	if s.g.slots[0].get().mux != nil {
		t.Fatal("a stream was opened to a plugin that does not stream")
	}
	pid := s.PID()
	for i := 1; i <= 9; i++ {
		v, err := s.OnMessage(context.Background(), message(t, "x"))
		if got, _ := header(v, "X-Plugin-Pid"); err != nil || got != strconv.Itoa(pid) {
			t.Fatalf("call %d: %v %v", i, v, err)
		}
	}
	// The 10th panics: on_error = continue, and the plugin is restarted.
	if v, err := s.OnMessage(context.Background(), message(t, "x")); err != nil || len(v.Edits.Headers) != 0 {
		t.Fatalf("the crashing call: %v %v", v, err)
	}
	waitFor(t, "a restarted plugin", func() bool { p := s.PID(); return p != 0 && p != pid })
	if _, err := s.OnMessage(context.Background(), message(t, "x")); err != nil {
		t.Fatal(err)
	}
	if s.g.slots[0].get().mux != nil {
		t.Fatal("the restarted unary plugin got a stream")
	}
}
