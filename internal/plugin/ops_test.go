package plugin

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
)

// TestInstances: instances = 3 starts three processes, calls reach each
// of them, and a killed one leaves the other two serving while it is
// restarted.
func TestInstances(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	s, lb := start(t, "ok", Options{Instances: 3, Metrics: m})
	pids := s.PIDs()
	if len(pids) != 3 || slices.Contains(pids, 0) || pids[0] == pids[1] || pids[1] == pids[2] || pids[0] == pids[2] {
		t.Fatalf("PIDs() = %v, want three processes", pids)
	}
	if got := promtest.ToFloat64(m.up.WithLabelValues("t")); got != 3 {
		t.Fatalf("sluice_plugin_up = %v, want 3", got)
	}
	served := map[string]int{}
	for range 30 {
		v, err := s.OnMessage(context.Background(), message(t, "x"))
		if err != nil {
			t.Fatalf("OnMessage: %v\n%s", err, lb)
		}
		p, _ := header(v, "X-Plugin-Pid")
		served[p]++
	}
	for _, p := range pids {
		if served[strconv.Itoa(p)] == 0 {
			t.Fatalf("process %d served no call (calls per process: %v)", p, served)
		}
	}

	victim := pids[1]
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the killed process to exit", func() bool { return !alive(victim) })
	failed := 0
	for range 20 {
		v, err := s.OnMessage(context.Background(), message(t, "x"))
		if err != nil {
			// A call that meets the dead process before the host noticed:
			// one on the broken Calls stream, and at most one more that
			// falls back to a unary RPC in the moment before the instance
			// is marked failed.
			failed++
			continue
		}
		if p, _ := header(v, "X-Plugin-Pid"); p == strconv.Itoa(victim) {
			t.Fatalf("a call answered by the killed process %d", victim)
		}
	}
	if failed > 2 {
		t.Fatalf("%d of 20 calls failed with one of three instances killed, want at most 2\n%s", failed, lb)
	}
	waitFor(t, "the killed instance restarted", func() bool {
		now := s.PIDs()
		return !slices.Contains(now, 0) && !slices.Contains(now, victim) && now[0] == pids[0] && now[2] == pids[2]
	})
	if got := promtest.ToFloat64(m.restarts.WithLabelValues("t")); got != 1 {
		t.Fatalf("sluice_plugin_restarts_total = %v, want 1", got)
	}
	if got := promtest.ToFloat64(m.up.WithLabelValues("t")); got != 3 {
		t.Fatalf("sluice_plugin_up = %v after the restart, want 3", got)
	}
	ok := promtest.ToFloat64(m.calls.WithLabelValues("t", "on_message", "ok"))
	bad := promtest.ToFloat64(m.calls.WithLabelValues("t", "on_message", "unavailable"))
	if ok+bad != 50 || ok != float64(50-failed) {
		t.Fatalf("calls ok=%v unavailable=%v, want %d and %d", ok, bad, 50-failed, failed)
	}
	if n := promtest.CollectAndCount(reg, "sluice_plugin_call_duration_seconds"); n != len(s.Hooks()) {
		t.Fatalf("%d duration series, want one per hook served %v", n, s.Hooks())
	}
	s.Close()
	if got := promtest.ToFloat64(m.up.WithLabelValues("t")); got != 0 {
		t.Fatalf("sluice_plugin_up = %v after Close, want 0", got)
	}
	for _, p := range s.PIDs() {
		if p != 0 {
			t.Fatalf("PIDs() after Close: %v", s.PIDs())
		}
	}
	for _, p := range append(pids, victim) {
		if alive(p) {
			t.Fatalf("process %d alive after Close", p)
		}
	}
}

// TestPoolSharesAndCrashLoop: a pool hands the same processes to a stage
// with the same identity and new ones to a changed one; processes stop
// with their last stage; Check reports a stage with 5 restarts in a
// minute.
func TestPoolSharesAndCrashLoop(t *testing.T) {
	pool := NewPool(nil)
	opts := func(tag string) Options {
		return Options{Name: "p", Cmd: faultyBin, Args: []string{"ok"}, Config: map[string]any{"tag": tag}, RestartMin: 1}
	}
	a, err := pool.Start(opts("a"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	o := opts("a")
	o.Timeout = 1e9 // a host-side setting: still the same processes
	b, err := pool.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	c, err := pool.Start(opts("c"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if a.PID() != b.PID() || a.PID() == c.PID() {
		t.Fatalf("PIDs a=%d b=%d c=%d: want a == b != c", a.PID(), b.PID(), c.PID())
	}
	pid := a.PID()
	a.Close()
	if !alive(pid) {
		t.Fatal("closing one of two stages stopped their shared process")
	}
	if err := pool.Check(); err != nil {
		t.Fatalf("Check: %v", err)
	}
	for i := range 5 {
		p := c.PID()
		syscall.Kill(p, syscall.SIGKILL)
		waitFor(t, "exit", func() bool { return !alive(p) })
		c.OnMessage(context.Background(), message(t, "x")) // meets the dead process
		waitFor(t, "restart "+strconv.Itoa(i+1), func() bool { n := c.PID(); return n != 0 && n != p })
	}
	err = pool.Check()
	if err == nil || !strings.Contains(err.Error(), `plugin stage "p" is crash looping: 5 restarts`) {
		t.Fatalf("Check after 5 restarts: %v", err)
	}
	b.Close()
	if alive(pid) {
		t.Fatal("the shared process outlived its last stage")
	}
}
