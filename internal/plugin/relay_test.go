package plugin_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/smtp"
	"net/textproto"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/plugin"
	"github.com/sluice-mta/sluice/internal/server"
	"github.com/sluice-mta/sluice/internal/testutil"
)

// startRelay runs a real relay whose pipeline is the test plugin (with
// stageOpts) and a route to a sink; it returns the SMTP address and the
// sink.
func startRelay(t *testing.T, stageOpts string) (string, *testutil.Sink) {
	addr, sink, _ := startRelayServer(t, stageOpts)
	return addr, sink
}

func startRelayServer(t *testing.T, stageOpts string) (string, *testutil.Sink, *server.Server) {
	e := startRelayEnv(t, stageOpts)
	return e.addr, e.sink, e.srv
}

// relayEnv is a running relay with the test plugin.
type relayEnv struct {
	addr, admin string // SMTP and admin listeners
	sink        *testutil.Sink
	srv         *server.Server
	write       func(stageOpts string) // writes the configuration again (for a reload)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	return testutil.FreeAddr(t)
}

func startRelayEnv(t *testing.T, stageOpts string) *relayEnv {
	t.Helper()
	dir := t.TempDir()
	sink := testutil.StartSink(t, testutil.SinkOptions{})
	addr, admin := freeAddr(t), freeAddr(t)
	p := filepath.Join(dir, "pipeline.lua")
	write := func(stageOpts string) {
		src := fmt.Sprintf(`
sluice.spool { path = %q }
sluice.events { file = %q }
sluice.listen_smtp { addr = %q, relay_networks = { "127.0.0.0/8" } }
sluice.listen_admin { addr = %q }
sluice.stage("faulty", sluice.plugin { cmd = %q, %s })
sluice.stage("route", { on_route = function(msg, rcpt) return sluice.route.relay { host = "127.0.0.1", port = %d, tls = "none" } end })
`, filepath.Join(dir, "spool"), filepath.Join(dir, "events.jsonl"), addr, admin, plugin.FaultyBin(), stageOpts, sink.Port)
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(stageOpts)
	cfg, err := config.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop(context.Background()) })
	return &relayEnv{addr: addr, admin: admin, sink: sink, srv: srv, write: write}
}

func send(addr string, i int) error {
	msg := fmt.Sprintf("From: a@origin.example\r\nTo: b@dest.example\r\nSubject: n%d\r\n\r\nbody %d\r\n", i, i)
	return smtp.SendMail(addr, nil, "a@origin.example", []string{"b@dest.example"}, []byte(msg))
}

func waitSink(t *testing.T, sink *testutil.Sink, n int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for len(sink.Messages()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages reached the sink", len(sink.Messages()), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRelayKeepsServingWhilePluginCrashes: a plugin that panics on every
// 10th message. Each message is either accepted (and delivered with the
// plugin's header) or refused with 451 (on_error = tempfail); the plugin is
// restarted and the relay keeps accepting mail.
func TestRelayKeepsServingWhilePluginCrashes(t *testing.T) {
	addr, sink := startRelay(t, `args = { "panic10" }, on_error = "tempfail", timeout = "5s"`)
	const want = 35
	accepted, tempfailed := 0, 0
	for i := 0; accepted < want; i++ {
		if i > 5000 {
			t.Fatalf("only %d accepted after %d attempts", accepted, i)
		}
		err := send(addr, i)
		if err == nil {
			accepted++
			continue
		}
		var te *textproto.Error
		if !errors.As(err, &te) || te.Code != 451 {
			t.Fatalf("message %d: %v (want 250 or 451)", i, err)
		}
		tempfailed++
		time.Sleep(10 * time.Millisecond)
	}
	waitSink(t, sink, want)
	pids := map[string]bool{}
	for _, m := range sink.Messages() {
		s := string(m.Data)
		i := strings.Index(s, "X-Plugin-Pid: ")
		if i < 0 {
			t.Fatalf("a delivered message lacks the plugin's header:\n%s", s)
		}
		pids[s[i:i+strings.Index(s[i:], "\r\n")]] = true
	}
	if len(pids) < 3 || tempfailed < 3 {
		t.Fatalf("%d plugin processes served, %d messages tempfailed: want restarts after crashes", len(pids), tempfailed)
	}
	t.Logf("%d accepted, %d tempfailed, %d plugin processes", accepted, tempfailed, len(pids))
}

// TestRelayOnErrorContinue: a hanging plugin under on_error = continue
// lets mail through without its header.
func TestRelayOnErrorContinue(t *testing.T) {
	addr, sink := startRelay(t, `args = { "hang" }, on_error = "continue", timeout = "100ms"`)
	for i := 0; i < 3; i++ {
		if err := send(addr, i); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	waitSink(t, sink, 3)
	for _, m := range sink.Messages() {
		if strings.Contains(string(m.Data), "X-Plugin-Pid") {
			t.Fatalf("header from a plugin that never answered")
		}
	}
}

// TestRelayOnErrorReject: the same plugin under on_error = reject: 550.
func TestRelayOnErrorReject(t *testing.T) {
	addr, _ := startRelay(t, `args = { "hang" }, on_error = "reject", timeout = "100ms"`)
	err := send(addr, 1)
	var te *textproto.Error
	if !errors.As(err, &te) || te.Code != 550 || !strings.HasPrefix(te.Msg, "5.7.1") {
		t.Fatalf("want 550 5.7.1, got %v", err)
	}
}

func pidOf(t *testing.T, data []byte) int {
	t.Helper()
	s := string(data)
	i := strings.Index(s, "X-Plugin-Pid: ")
	if i < 0 {
		t.Fatalf("no X-Plugin-Pid in\n%s", s)
	}
	s = s[i+len("X-Plugin-Pid: "):]
	pid, err := strconv.Atoi(s[:strings.Index(s, "\r\n")])
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// TestRelayReload: a reload that keeps the plugin's command and config
// keeps its process; one that changes its config starts a new process,
// and the old one serves its call in flight to the end and then exits.
func TestRelayReload(t *testing.T) {
	e := startRelayEnv(t, `args = { "ok" }, config = { tag = "a" }`)
	if err := send(e.addr, 1); err != nil {
		t.Fatal(err)
	}
	waitSink(t, e.sink, 1)
	old := pidOf(t, e.sink.Messages()[0].Data)

	// Unchanged (only a host-side setting differs): the same process.
	e.write(`args = { "ok" }, config = { tag = "a" }, timeout = "20s"`)
	if _, err := e.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := send(e.addr, 2); err != nil {
		t.Fatal(err)
	}
	waitSink(t, e.sink, 2)
	if now := pidOf(t, e.sink.Messages()[1].Data); now != old {
		t.Fatalf("plugin process %d after a reload that kept its config, was %d", now, old)
	}

	// A call in flight on the old process while the config changes.
	wait := filepath.Join(t.TempDir(), "go")
	slow := make(chan error, 1)
	go func() {
		msg := "From: a@origin.example\r\nTo: b@dest.example\r\nX-Wait-File: " + wait + "\r\nSubject: slow\r\n\r\nslow\r\n"
		slow <- smtp.SendMail(e.addr, nil, "a@origin.example", []string{"b@dest.example"}, []byte(msg))
	}()
	waitForFile(t, wait+".started")
	e.write(`args = { "ok" }, config = { tag = "b" }`)
	if _, err := e.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := send(e.addr, 3); err != nil {
		t.Fatal(err)
	}
	waitSink(t, e.sink, 3)
	newer := pidOf(t, e.sink.Messages()[2].Data)
	if newer == old {
		t.Fatalf("the same plugin process %d after a reload that changed its config", newer)
	}
	if !strings.Contains(string(e.sink.Messages()[2].Data), "X-Config: b") {
		t.Fatalf("the new process did not get the new config:\n%s", e.sink.Messages()[2].Data)
	}
	if zombie(old) {
		t.Fatalf("the old plugin process %d exited with a call in flight", old)
	}
	if err := os.WriteFile(wait, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := <-slow; err != nil {
		t.Fatalf("the message in flight during the reload: %v", err)
	}
	waitSink(t, e.sink, 4)
	if got := pidOf(t, e.sink.Messages()[3].Data); got != old {
		t.Fatalf("the call in flight was answered by process %d, want the old %d", got, old)
	}
	deadline := time.Now().Add(30 * time.Second)
	for syscall.Kill(old, 0) == nil && !zombie(old) {
		if time.Now().After(deadline) {
			t.Fatalf("the old plugin process %d still runs", old)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if syscall.Kill(newer, 0) != nil || zombie(newer) {
		t.Fatalf("the new plugin process %d is gone", newer)
	}
}

func waitForFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never appeared", path)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] == "Z"
}

// TestRelayPluginMetricsAndReadiness: the node's registry has the
// sluice_plugin_* metrics of its plugin stage, and /readyz turns 503
// naming the stage once it has restarted 5 times within a minute.
func TestRelayPluginMetricsAndReadiness(t *testing.T) {
	e := startRelayEnv(t, `args = { "ok" }, instances = 2`)
	ready := func() (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + e.admin + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := ready(); code != 200 {
		t.Fatalf("/readyz %d %q before any crash", code, body)
	}
	sent := 0
	// deliverOne sends until a message is accepted (a message that meets
	// a dead process is refused with 451) and waits for it at the sink;
	// it returns the process that added its header.
	deliverOne := func() int {
		t.Helper()
		n := len(e.sink.Messages())
		for {
			sent++
			err := send(e.addr, sent)
			if err == nil {
				break
			}
			var te *textproto.Error
			if !errors.As(err, &te) || te.Code != 451 {
				t.Fatalf("message %d: %v (want 250 or 451)", sent, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		waitSink(t, e.sink, n+1)
		msgs := e.sink.Messages()
		return pidOf(t, msgs[len(msgs)-1].Data)
	}
	pid := deliverOne()
	killed := map[int]bool{}
	for len(killed) < 5 {
		if !killed[pid] {
			killed[pid] = true
			syscall.Kill(pid, syscall.SIGKILL)
		}
		// The call that meets the dead process restarts it, or goes to
		// the other instance.
		pid = deliverOne()
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, body := ready()
		if code == 503 && strings.Contains(body, `plugin stage "faulty" is crash looping`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz %d %q after 5 plugin crashes", code, body)
		}
		// A killed process is noticed by the next call to it or by the
		// health check.
		deliverOne()
	}
	mfs, err := e.srv.Metrics().Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "sluice_plugin_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			switch {
			case m.Counter != nil:
				got[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				got[key] = m.Gauge.GetValue()
			case m.Histogram != nil:
				got[key] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	if got["sluice_plugin_restarts_total,stage=faulty"] < 5 {
		t.Errorf("restarts %v, want at least 5 (%v)", got["sluice_plugin_restarts_total,stage=faulty"], got)
	}
	ok := got["sluice_plugin_calls_total,hook=on_message,outcome=ok,stage=faulty"]
	if int(ok) != len(e.sink.Messages()) {
		t.Errorf("%v ok on_message calls, %d messages delivered (%v)", ok, len(e.sink.Messages()), got)
	}
	if got["sluice_plugin_call_duration_seconds,hook=on_message,stage=faulty"] < ok {
		t.Errorf("duration samples %v < ok calls %v", got["sluice_plugin_call_duration_seconds,hook=on_message,stage=faulty"], ok)
	}
	if up := got["sluice_plugin_up,stage=faulty"]; up < 0 || up > 2 {
		t.Errorf("sluice_plugin_up %v, want 0..2", up)
	}
}
