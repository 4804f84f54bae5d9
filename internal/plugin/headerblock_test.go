package plugin

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-message/textproto"

	"github.com/sluice-mta/sluice/pipeline"
	"github.com/sluice-mta/sluice/plugins/sdk"
)

// foldedMessage has a folded field, a repeated one and a body.
func foldedMessage(t *testing.T) (*pipeline.Message, int) {
	t.Helper()
	txn := &pipeline.Txn{Conn: &pipeline.Conn{ID: "c"}, ID: "m1", Sender: "a@x.example"}
	raw := "Received: from a.example\r\n\tby b.example; Mon, 30 Nov 2026 08:00:00 +0000\r\n" +
		"Received: from c.example by a.example; Mon, 30 Nov 2026 07:59:00 +0000\r\n" +
		"Subject: folded\r\n  subject\r\nFrom: a@x.example\r\n\r\nhello body\r\n"
	m, err := pipeline.ParseMessage(txn, []byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	if err := textproto.WriteHeader(&hb, m.Header); err != nil {
		t.Fatal(err)
	}
	return m, hb.Len()
}

// checkHeaderSeen calls on_message and checks that the plugin saw the
// header of foldedMessage byte for byte (its length written out, its
// field count, the unfolded Subject) and the body as its body need says.
func checkHeaderSeen(t *testing.T, s *Stage, wantBody int) {
	t.Helper()
	m, hlen := foldedMessage(t)
	v, err := s.OnMessage(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"X-Header-Len": strconv.Itoa(hlen), "X-Header-Fields": "4",
		"X-Subject-Seen": "FOLDED SUBJECT", "X-Body-Len": strconv.Itoa(wantBody),
	} {
		if got, _ := header(v, name); got != want {
			t.Errorf("%s %q, want %q (verdict %+v)", name, got, want, v)
		}
	}
}

// TestHeaderForms: a protocol 1.2 plugin (the SDK's default) says
// header_block and gets the header as one block; one served with
// sdk.WithHeaderFields (as protocol 1.1 plugins are) gets fields. Both see
// the same header, over the stream and over unary calls, with and without
// the body.
func TestHeaderForms(t *testing.T) {
	for _, tt := range []struct {
		name      string
		env       []string
		block     bool
		body      string
		wantBody  int
		streaming bool
	}{
		{"block/headers", nil, true, "headers", 0, true},
		{"block/full", nil, true, "full", len("hello body\r\n"), true},
		{"block/unary", []string{"FAULTY_UNARY=1"}, true, "full", len("hello body\r\n"), false},
		{"fields/headers", []string{"FAULTY_FIELDS=1"}, false, "headers", 0, true},
		{"fields/full", []string{"FAULTY_FIELDS=1"}, false, "full", len("hello body\r\n"), true},
		{"fields/unary", []string{"FAULTY_FIELDS=1", "FAULTY_UNARY=1"}, false, "headers", 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := start(t, "ok", Options{Env: tt.env, Config: map[string]any{"body": tt.body}})
			d := s.Describe()
			if d.HeaderBlock != tt.block || d.Streaming != tt.streaming || d.ProtocolMinor != sdk.ProtocolMinor {
				t.Fatalf("describe: header_block %v streaming %v minor %d", d.HeaderBlock, d.Streaming, d.ProtocolMinor)
			}
			checkHeaderSeen(t, s, tt.wantBody)
		})
	}
}

// TestHeaderBlockToOlderBuild: the stage started with a plugin that reads
// header blocks; after a crash the command starts an older build that
// reads fields (here: the same binary, told so by a marker file). Its
// calls get the header as fields, and it still sees it whole.
func TestHeaderBlockToOlderBuild(t *testing.T) {
	dir := t.TempDir()
	mark := filepath.Join(dir, "older")
	script := filepath.Join(dir, "plugin.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n[ -f '"+mark+"' ] && export FAULTY_FIELDS=1\nexec '"+faultyBin+"' \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	lb := &logBuf{}
	s, err := Start(Options{Name: "t", Cmd: script, Args: []string{"ok"}, Config: map[string]any{"body": "headers"},
		Logger: slog.New(slog.NewTextHandler(lb, nil)), RestartMin: 20 * time.Millisecond, HealthInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatalf("Start: %v\n%s", err, lb)
	}
	defer s.Close()
	if !s.Describe().HeaderBlock {
		t.Fatal("the plugin at start does not say header_block")
	}
	checkHeaderSeen(t, s, 0)
	if err := os.WriteFile(mark, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	pid := s.PID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a restarted plugin", func() bool { p := s.PID(); return p != 0 && p != pid })
	if inst := s.g.slots[0].get(); inst == nil || inst.headerBlock {
		t.Fatalf("the restarted plugin reads header blocks (instance %+v)", inst)
	}
	checkHeaderSeen(t, s, 0)
}
