package plugin_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
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
	t.Helper()
	dir := t.TempDir()
	sink := testutil.StartSink(t, testutil.SinkOptions{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	src := fmt.Sprintf(`
sluice.spool { path = %q }
sluice.events { file = %q }
sluice.listen_smtp { addr = %q, relay_networks = { "127.0.0.0/8" } }
sluice.stage("faulty", sluice.plugin { cmd = %q, %s })
sluice.stage("route", { on_route = function(msg, rcpt) return sluice.route.relay { host = "127.0.0.1", port = %d, tls = "none" } end })
`, filepath.Join(dir, "spool"), filepath.Join(dir, "events.jsonl"), addr, plugin.FaultyBin(), stageOpts, sink.Port)
	p := filepath.Join(dir, "pipeline.lua")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
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
	return addr, sink, srv
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

// TestRelayReload: a reload builds the pipeline again with a new plugin
// process; the old one is stopped once its pipeline is retired.
func TestRelayReload(t *testing.T) {
	addr, sink, srv := startRelayServer(t, `args = { "ok" }`)
	if err := send(addr, 1); err != nil {
		t.Fatal(err)
	}
	waitSink(t, sink, 1)
	old := pidOf(t, sink.Messages()[0].Data)
	if _, err := srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := send(addr, 2); err != nil {
		t.Fatal(err)
	}
	waitSink(t, sink, 2)
	if now := pidOf(t, sink.Messages()[1].Data); now == old {
		t.Fatalf("the same plugin process %d after a reload", now)
	}
	deadline := time.Now().Add(30 * time.Second)
	for syscall.Kill(old, 0) == nil && !zombie(old) {
		if time.Now().After(deadline) {
			t.Fatalf("the old plugin process %d still runs", old)
		}
		time.Sleep(20 * time.Millisecond)
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
