package luahost

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// logBuf is a concurrency-safe log sink for tests.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// setup writes files (pipeline.lua and scripts) into a temp dir, loads the
// configuration and builds a host. It returns the host, the stages by name
// and the log output.
func setup(t testing.TB, files map[string]string) (*Host, map[string]pipeline.Stage, *logBuf) {
	t.Helper()
	dir := testutil.TempFiles(t, files)
	cfg, err := config.Load(filepath.Join(dir, "pipeline.lua"))
	if err != nil {
		t.Fatalf("config.Load: %v", err)
	}
	return hostFor(t, cfg)
}

func hostFor(t testing.TB, cfg *config.Config) (*Host, map[string]pipeline.Stage, *logBuf) {
	t.Helper()
	lb := &logBuf{}
	log := slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h, err := NewHost(cfg, log)
	if err != nil {
		t.Fatalf("NewHost: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	stages := map[string]pipeline.Stage{}
	for _, spec := range cfg.Stages {
		if spec.Kind != config.StageLua && spec.Kind != config.StageInline {
			continue // built-in and plugin stages are not the host's
		}
		st, err := h.Stage(spec)
		if err != nil {
			t.Fatalf("Stage(%s): %v", spec.Name, err)
		}
		stages[spec.Name] = st
	}
	return h, stages, lb
}

// inline builds a host from a single inline stage "s" whose table is body.
func inline(t testing.TB, body string) (pipeline.Stage, *Host, *logBuf) {
	t.Helper()
	h, stages, lb := setup(t, map[string]string{
		"pipeline.lua": "local sluice = require('sluice')\nsluice.stage('s', {\n" + body + "\n})\n",
	})
	return stages["s"], h, lb
}

func testConn() *pipeline.Conn {
	return &pipeline.Conn{
		ID: "c1", Source: pipeline.SourceSMTP, Listener: "mx",
		RemoteIP: netip.MustParseAddr("192.0.2.7"), RemotePort: 40000,
		HELO: "client.example", TLS: "TLS1.3",
	}
}

func testTxn() *pipeline.Txn {
	r, _ := pipeline.NewRecipient("bob@example.org")
	return &pipeline.Txn{
		Conn: testConn(), ID: "01JTEST", Sender: "alice@example.com",
		Recipients: []*pipeline.Recipient{r},
		Received:   time.Unix(1700000000, 0),
	}
}

func testMsg(t testing.TB) *pipeline.Message {
	t.Helper()
	raw := "From: alice@example.com\r\nTo: bob@example.org\r\nSubject: hi\r\nReceived: one\r\nReceived: two\r\n\r\nbody\r\n"
	m, err := pipeline.ParseMessage(testTxn(), []byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func rcpt(t testing.TB, addr string) *pipeline.Recipient {
	t.Helper()
	r, err := pipeline.NewRecipient(addr)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func rcptHook(t testing.TB, st pipeline.Stage) pipeline.RcptHook {
	t.Helper()
	h, ok := st.(pipeline.RcptHook)
	if !ok {
		t.Fatalf("stage %s is not a RcptHook", st.Name())
	}
	return h
}

func wantErrContains(t testing.TB, err error, subs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one containing %q", subs)
	}
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			t.Fatalf("error %q does not contain %q", err, s)
		}
	}
}

var bg = context.Background()

func readTestdata(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// rcptApplied calls on_rcpt and applies the verdict's edits as the chain
// does.
func rcptApplied(st pipeline.Stage, txn *pipeline.Txn, r *pipeline.Recipient) (pipeline.Verdict, error) {
	v, err := st.(pipeline.RcptHook).OnRcpt(bg, txn, r)
	if err == nil && v.Action != pipeline.Reject && v.Action != pipeline.Tempfail {
		err = pipeline.ApplyEdits(st.Name(), "on_rcpt", &v.Edits, txn, nil)
	}
	return v, err
}

// messageApplied calls on_message and applies the verdict's edits as the
// chain does.
func messageApplied(st pipeline.Stage, msg *pipeline.Message) (pipeline.Verdict, error) {
	v, err := st.(pipeline.MessageHook).OnMessage(bg, msg)
	if err == nil && v.Action != pipeline.Reject && v.Action != pipeline.Tempfail {
		err = pipeline.ApplyEdits(st.Name(), "on_message", &v.Edits, msg.Txn, msg)
	}
	return v, err
}
