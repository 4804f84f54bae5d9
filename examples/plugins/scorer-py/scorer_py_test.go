// Package scorerpy holds the tests of the Python example plugin scorer.py:
// the same assertions as the Go scorer's (examples/plugins/scorer), against
// a plugin that shares no code with Sluice but the .proto.
//
// The tests need Debian's python3-grpcio, python3-grpc-tools and
// python3-protobuf for /usr/bin/python3 (`make deps` and .ci/run install
// them). Without them the tests skip, saying so, unless
// SLUICE_TEST_PYTHON=require (set by .ci/run), which makes them fail.
package scorerpy

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
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/server"
	"github.com/sluice-mta/sluice/internal/testutil"
	stagev1 "github.com/sluice-mta/sluice/plugins/proto/stage/v1"
	"github.com/sluice-mta/sluice/plugins/sdk"
	"google.golang.org/grpc"
)

// python is the interpreter the example documents: Debian's, which sees
// Debian's python3-grpcio (a pyenv or venv python3 on PATH does not).
const python = "/usr/bin/python3"

// needPython skips (or, under SLUICE_TEST_PYTHON=require, fails) the test
// when python lacks the gRPC modules.
func needPython(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs a Python plugin in a relay")
	}
	out, err := exec.Command(python, "-c", "import grpc, grpc_tools, google.protobuf").CombinedOutput()
	if err == nil {
		return
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	msg := fmt.Sprintf("%s cannot import grpc (%v: %s); install Debian's python3-grpcio python3-grpc-tools python3-protobuf (make deps does it as root)",
		python, err, lines[len(lines)-1])
	if os.Getenv("SLUICE_TEST_PYTHON") == "require" {
		t.Fatal("SLUICE_TEST_PYTHON=require: " + msg)
	}
	t.Skip("SKIPPING the Python plugin example test: " + msg)
}

// genStubs generates the Python code of stage.proto into a temporary
// directory, as a build step would, and returns the directory.
func genStubs(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	protoDir, err := filepath.Abs("../../../plugins/proto/stage/v1")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(python, "-m", "grpc_tools.protoc", "-I"+protoDir,
		"--python_out="+dir, "--grpc_python_out="+dir, filepath.Join(protoDir, "stage.proto"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("grpc_tools.protoc: %v\n%s", err, out)
	}
	for _, f := range []string{"stage_pb2.py", "stage_pb2_grpc.py"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("grpc_tools.protoc did not write %s: %v", f, err)
		}
	}
	return dir
}

func script(t testing.TB) string {
	t.Helper()
	p, err := filepath.Abs("scorer.py")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestScorerPyInRelay runs scorer.py as a stage of a real relay (SMTP in, a
// sink as smarthost) and checks that its header reaches the sink, that its
// rejection carries the code its config chose, and so that the config
// reaches it.
func TestScorerPyInRelay(t *testing.T) {
	needPython(t)
	stubs := genStubs(t)
	dir := t.TempDir()
	sink := testutil.StartSink(t, testutil.SinkOptions{})
	addr := testutil.FreeAddr(t)
	src := fmt.Sprintf(`
sluice.spool { path = %q }
sluice.events { file = %q }
sluice.listen_smtp { addr = %q, relay_networks = { "127.0.0.0/8" } }
sluice.stage("scorer", sluice.plugin {
  cmd = %q, args = { %q }, env = { PYTHONPATH = %q }, timeout = "5s", hooks = { "on_message" },
  config = { threshold = 4, reject_code = 554, reject_enhanced = "5.7.9", reject_text = "Scored too high",
             rules = { { pattern = "(?i)lottery", score = 3 }, { pattern = "(?i)winner", score = 2 } } },
})
sluice.stage("route", { on_route = function(msg, rcpt) return sluice.route.relay { host = "127.0.0.1", port = %d, tls = "none" } end })
`, filepath.Join(dir, "spool"), filepath.Join(dir, "events.jsonl"), addr, python, script(t), stubs, sink.Port)
	p := filepath.Join(dir, "pipeline.lua")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{t: t}
	srv, err := server.New(cfg, slog.New(slog.NewTextHandler(logs, nil)))
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
	// 3 points: under the configured threshold of 4 (the default is 5, and
	// the default rules do not know "lottery").
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
	// 5 points, from the subject and the body: rejected with the code the
	// config chose.
	err = send("Lottery news", "you are a WINNER")
	var te *textproto.Error
	if !errors.As(err, &te) || te.Code != 554 || !strings.Contains(te.Msg, "5.7.9 Scored too high (score 5.0, threshold 4.0)") {
		t.Fatalf("spam: %v", err)
	}
	// The plugin's stderr reaches the relay's log, tagged.
	if !logs.contains("configured stage=scorer threshold=4.0 rules=2") {
		t.Errorf("the plugin's configured line is not in the relay's log")
	}
}

// TestScorerPyCheck: `sluice check` (server.Validate) starts the Python
// plugin, checks its Describe answer against the configured hooks and
// reports a config the plugin refuses. The plugin runs without PYTHONPATH
// here, so it generates its stubs itself (the path the docs' minimal
// configuration takes). The stubs' temporary directory is gone afterwards,
// also when the plugin refused its config (and was killed at once, so that
// an exit handler would not run).
func TestScorerPyCheck(t *testing.T) {
	needPython(t)
	dir := t.TempDir()
	tmp := filepath.Join(dir, "tmp") // the plugin's TMPDIR
	if err := os.Mkdir(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ opts, want string }{
		{`hooks = { "on_message" }`, ""},
		{`hooks = { "on_message", "on_rcpt" }`, "does not implement on_rcpt"},
		{`config = { reject_code = 250 }`, "reject_code 250: want a 5xx code"},
		{`config = { rules = { { pattern = "(", score = 1 } } }`, "rules[1]: missing ), unterminated subpattern"},
		{`config = { threshold = "high" }`, "threshold 'high': want a number"},
	} {
		src := fmt.Sprintf("sluice.spool { path = %q }\nsluice.listen_smtp { addr = \"127.0.0.1:0\" }\nsluice.stage(\"scorer\", sluice.plugin { cmd = %q, args = { %q }, env = { TMPDIR = %q }, %s })\n",
			filepath.Join(dir, "spool"), python, script(t), tmp, tt.opts)
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
		if left, _ := filepath.Glob(filepath.Join(tmp, "scorer-py-*")); len(left) != 0 {
			t.Errorf("%s: the plugin left its stubs' temporary directory behind: %v", tt.opts, left)
			for _, d := range left {
				os.RemoveAll(d)
			}
		}
	}
}

// TestScorerPyRefusesHandRun: started without the magic cookie, the plugin
// says what it is and exits 1 without printing a handshake.
func TestScorerPyRefusesHandRun(t *testing.T) {
	needPython(t)
	cmd := exec.Command(python, script(t))
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || stdout.Len() != 0 || !strings.Contains(stderr.String(), "Sluice stage plugin") {
		t.Fatalf("run by hand: %v, stdout %q, stderr %q", err, stdout.String(), stderr.String())
	}
}

// logBuffer passes the relay's log to t.Log and keeps it for assertions.
type logBuffer struct {
	t   *testing.T
	mu  sync.Mutex
	buf strings.Builder
}

func (w *logBuffer) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	return len(p), nil
}

func (w *logBuffer) contains(s string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Contains(w.buf.String(), s)
}

// TestScorerPyHandshake drives scorer.py with go-plugin's own client, the
// way Sluice starts it: the handshake is accepted, go-plugin's ping (the
// grpc.health.v1 check of the service "plugin") answers, and Kill's
// plugin.GRPCController/Shutdown makes the process exit by itself (status
// 0; without the controller go-plugin would kill it with SIGKILL).
func TestScorerPyHandshake(t *testing.T) {
	rpc, client, cmd := startPlugin(t)
	ctx := context.Background()
	if _, err := rpc.Configure(ctx, &stagev1.ConfigureRequest{StageName: "t", ConfigJson: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	// The built-in rules, the same as the Go scorer's: viagra 3, casino 2,
	// act now 1.
	v, err := rpc.OnMessage(ctx, &stagev1.MessageRequest{Message: &stagev1.Message{
		Header: []*stagev1.HeaderField{{Name: "Subject", Value: "Cheap VIAGRA"}}, HasHeader: true,
		Body: []byte("casino bonus, act now\r\n"), HasBody: true,
	}})
	if err != nil {
		t.Fatal(err)
	}
	if v.Action != stagev1.Action_ACTION_REJECT || v.Code != 550 || fmt.Sprint(v.Enhanced) != "[5 7 1]" ||
		v.Text != "Message looks like spam (score 6.0, threshold 5.0)" {
		t.Errorf("default config, spam: %v", v)
	}
	// A 5 MB body: above gRPC's 4 MiB default, which both sides raise.
	big := []byte(strings.Repeat("all quiet here\r\n", 5<<20/16))
	v, err = rpc.OnMessage(ctx, &stagev1.MessageRequest{Message: &stagev1.Message{Body: big, HasBody: true, HasHeader: true}})
	if err != nil {
		t.Fatalf("5 MB message: %v", err)
	}
	if h := v.GetEdits().GetHeaders(); v.Action != stagev1.Action_ACTION_CONTINUE || len(h) != 1 || h[0].Name != "X-Spam-Score" || h[0].Value != "0.0" {
		t.Errorf("5 MB clean message: %v", v)
	}
	client.Kill()
	if !client.Exited() || cmd.ProcessState == nil || !cmd.ProcessState.Success() {
		t.Errorf("after Kill: exited %v, state %v; want a clean exit on Shutdown", client.Exited(), cmd.ProcessState)
	}
}

// startPlugin starts scorer.py with go-plugin's client, as Sluice does, and
// checks the handshake and go-plugin's ping. The plugin is killed at the end
// of the test.
func startPlugin(t testing.TB) (stagev1.StageClient, *goplugin.Client, *exec.Cmd) {
	t.Helper()
	needPython(t)
	cmd := exec.Command(python, script(t))
	cmd.Env = append(os.Environ(), "PYTHONPATH="+genStubs(t))
	client := goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		Plugins:          goplugin.PluginSet{sdk.PluginName: &sdk.GRPCPlugin{}},
		Cmd:              cmd,
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		Logger:           hclog.NewNullLogger(),
		GRPCDialOptions: []grpc.DialOption{grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(sdk.MaxMessageSize), grpc.MaxCallSendMsgSize(sdk.MaxMessageSize))},
	})
	t.Cleanup(client.Kill)
	proto, err := client.Client()
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if got := client.NegotiatedVersion(); got != sdk.ProtocolMajor {
		t.Errorf("negotiated protocol %d, want %d", got, sdk.ProtocolMajor)
	}
	if err := proto.Ping(); err != nil {
		t.Fatalf("go-plugin ping (grpc.health.v1 Check of \"plugin\"): %v", err)
	}
	raw, err := proto.Dispense(sdk.PluginName)
	if err != nil {
		t.Fatal(err)
	}
	return raw.(stagev1.StageClient), client, cmd
}

// BenchmarkScorerPyOnMessage measures one on_message call of the Python
// plugin (a 2 KB message, header and body) from Go over go-plugin's gRPC
// connection, the cost Sluice pays per message for this stage.
func BenchmarkScorerPyOnMessage(b *testing.B) {
	rpc, _, _ := startPlugin(b)
	ctx := context.Background()
	if _, err := rpc.Configure(ctx, &stagev1.ConfigureRequest{StageName: "b", ConfigJson: []byte(`{}`)}); err != nil {
		b.Fatal(err)
	}
	req := &stagev1.MessageRequest{Message: &stagev1.Message{
		Header: []*stagev1.HeaderField{{Name: "From", Value: "a@origin.example"}, {Name: "Subject", Value: "Quarterly report"}},
		Body:   []byte(strings.Repeat("Nothing to see here, just the numbers.\r\n", 50)), HasHeader: true, HasBody: true,
	}}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		v, err := rpc.OnMessage(ctx, req)
		if err != nil || v.Action != stagev1.Action_ACTION_CONTINUE {
			b.Fatalf("OnMessage: %v %v", v, err)
		}
	}
}
