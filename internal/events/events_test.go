package events

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

func TestExportToFileInOrderAndHooks(t *testing.T) {
	dir := t.TempDir()
	sp, err := spool.Open(filepath.Join(dir, "spool"), spool.Options{Node: "n"})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	fs, err := OpenFile(filepath.Join(dir, "ev", "events.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var hooked atomic.Int32
	ex, err := NewExporter(sp, []Sink{fs}, Options{OnEvent: func(ctx context.Context, ev *pipeline.Event) { hooked.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go ex.Run(ctx)
	stop := func() { cancel(); <-ex.Done() }
	defer stop() // stops the exporter before the spool closes if the test fails early

	for i := 0; i < 1500; i++ { // more than one export batch
		b := sp.NewBatch()
		b.AddEvent(&pipeline.Event{Type: pipeline.EventDeferred, MessageID: msgID(1), Attempt: i, Source: pipeline.SourceHTTP,
			Response: &pipeline.Response{Code: 451, Enhanced: "4.3.0", Text: "try later"}})
		if err := b.Commit(false); err != nil {
			t.Fatal(err)
		}
	}
	testutil.WaitFor(t, "the hooks to see 1500 events", func() bool { return hooked.Load() >= 1500 })
	stop()
	fs.Close()
	f, _ := os.Open(filepath.Join(dir, "ev", "events.jsonl"))
	defer f.Close()
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		var ev pipeline.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("line %d: %v", n, err)
		}
		testutil.ValidateEvent(t, sc.Bytes())
		if ev.Attempt != n || ev.Schema != 1 || ev.Node != "n" {
			t.Fatalf("line %d out of order or incomplete: %+v", n, ev)
		}
		n++
	}
	if n != 1500 || hooked.Load() != 1500 {
		t.Fatalf("file has %d events, hooks saw %d; want 1500", n, hooked.Load())
	}
}

func TestOpenFileDropsTornLastLine(t *testing.T) {
	for name, tc := range map[string]struct{ before, after string }{
		"clean":     {"{\"a\":1}\n", "{\"a\":1}\n"},
		"torn":      {"{\"a\":1}\n{\"b\":", "{\"a\":1}\n"},
		"only torn": {"{\"b\":", ""},
		"empty":     {"", ""},
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "e.jsonl")
			os.WriteFile(p, []byte(tc.before), 0o644)
			fs, err := OpenFile(p)
			if err != nil {
				t.Fatal(err)
			}
			fs.Close()
			got, _ := os.ReadFile(p)
			if string(got) != tc.after {
				t.Fatalf("file %q, want %q", got, tc.after)
			}
		})
	}
}
