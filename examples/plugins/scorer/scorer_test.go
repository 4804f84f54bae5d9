package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/smtp"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/server"
	"github.com/sluice-mta/sluice/internal/testutil"
)

func TestScore(t *testing.T) {
	s := &Scorer{}
	if err := s.Configure("t", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if got := s.Score("hello", []byte("see you tomorrow\r\n")); got != 0 {
		t.Errorf("clean message scored %v", got)
	}
	if got := s.Score("Cheap VIAGRA", []byte("casino bonus, act now\r\n")); got != 6 {
		t.Errorf("spam scored %v, want 6", got)
	}
	for _, bad := range []string{`{"rules":[{"pattern":"("}]}`, `{"reject_code":450}`, `{"reject_enhanced":"4.7.1"}`, `{"threshold":"high"}`} {
		if err := (&Scorer{}).Configure("t", []byte(bad)); err == nil {
			t.Errorf("Configure(%s) accepted", bad)
		}
	}
}

// TestScorerInRelay builds the plugin, runs it as a stage of a real relay
// (SMTP in, a sink as smarthost) and checks that its header reaches the
// sink, that its rejection carries the code its config chose, and so that
// the config reaches it.
func TestScorerInRelay(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the plugin and runs a relay")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "scorer")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	sink := testutil.StartSink(t, testutil.SinkOptions{})
	addr := testutil.FreeAddr(t)
	src := fmt.Sprintf(`
sluice.spool { path = %q }
sluice.events { file = %q }
sluice.listen_smtp { addr = %q, relay_networks = { "127.0.0.0/8" } }
sluice.stage("scorer", sluice.plugin {
  cmd = %q, timeout = "5s", hooks = { "on_message" },
  config = { threshold = 4, reject_code = 554, reject_enhanced = "5.7.9", reject_text = "Scored too high",
             rules = { { pattern = "(?i)lottery", score = 3 }, { pattern = "(?i)winner", score = 2 } } },
})
sluice.stage("route", { on_route = function(msg, rcpt) return sluice.route.relay { host = "127.0.0.1", port = %d, tls = "none" } end })
`, filepath.Join(dir, "spool"), filepath.Join(dir, "events.jsonl"), addr, bin, sink.Port)
	p := filepath.Join(dir, "pipeline.lua")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(cfg, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Stop(context.Background())

	send := func(subject, body string) error {
		msg := "From: a@origin.example\r\nTo: b@dest.example\r\nSubject: " + subject + "\r\n\r\n" + body + "\r\n"
		return smtp.SendMail(addr, nil, "a@origin.example", []string{"b@dest.example"}, []byte(msg))
	}
	// 3 points: under the configured threshold of 4 (the default is 5,
	// and the default rules do not know "lottery").
	if err := send("Lottery news", "hello"); err != nil {
		t.Fatalf("clean message: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(sink.Messages()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("nothing reached the sink")
		}
		time.Sleep(20 * time.Millisecond)
	}
	got := string(sink.Messages()[0].Data)
	if !strings.Contains(got, "X-Spam-Score: 3.0\r\n") {
		t.Fatalf("no X-Spam-Score: 3.0 in the delivered message:\n%s", got)
	}
	// 5 points: rejected with the code the config chose.
	err = send("Lottery WINNER", "claim it")
	var te *textproto.Error
	if !errors.As(err, &te) || te.Code != 554 || !strings.Contains(te.Msg, "5.7.9 Scored too high (score 5.0, threshold 4.0)") {
		t.Fatalf("spam: %v", err)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestCheck: `sluice check` (server.Validate) starts the plugin and checks
// its Describe answer against the configured hooks, and reports a config
// the plugin refuses.
func TestCheck(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the plugin")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "scorer")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, tt := range []struct{ opts, want string }{
		{`hooks = { "on_message" }`, ""},
		{`hooks = { "on_message", "on_rcpt" }`, "does not implement on_rcpt"},
		{`config = { reject_code = 250 }`, "reject_code 250: want a 5xx code"},
	} {
		src := fmt.Sprintf("sluice.spool { path = %q }\nsluice.listen_smtp { addr = \"127.0.0.1:0\" }\nsluice.stage(\"scorer\", sluice.plugin { cmd = %q, %s })\n",
			filepath.Join(dir, "spool"), bin, tt.opts)
		p := filepath.Join(dir, "pipeline.lua")
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(p)
		if err != nil {
			t.Fatal(err)
		}
		err = server.Validate(cfg, nil)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: %v", tt.opts, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: error %v, want %q", tt.opts, err, tt.want)
		}
	}
}
