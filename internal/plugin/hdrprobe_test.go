package plugin

import (
	"context"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

// probeHeaders are headers that make a lookup in the unparsed block differ
// from the parsed header if done naively, as the relay's SMTP server takes
// them (CRLF lines; bare LF and CR are refused before any stage).
var probeHeaders = []string{
	"From: Alice <a@x.test>\r\nTo: b@y.test\r\nSubject: a folded\r\n subject line\r\n\tand a tab\r\nX-Dup: one\r\nx-dup: two\r\nX-DUP: three\r\n   folded three\r\nDKIM-Signature: v=1; a=rsa-sha256; d=other.test; s=s1;\r\n\th=from:subject; bh=abc=;\r\n\tb=def\r\n\r\n",
	"From: =?UTF-8?B?SsO8cmdlbg==?= <a@x.test>\r\nSubject: =?UTF-8?Q?caf=C3=A9?= =?ISO-8859-1?Q?_na=EFve?=\r\n\r\n",
	"fROM: a@x.test\r\nsUbJeCt: odd case\r\nMESSAGE-ID: <1@x.test>\r\ndkim-signature: v=1; d=z.test\r\n\r\n",
	"From : a@x.test\r\nSubject\t: tab before colon\r\nX-Dup  : spaced\r\n\r\n",
	"From: a@x.test\r\nSubject:\r\n\tonly on the next line\r\n\t\r\n \r\n\tafter blanks\r\n\r\n",
	"From: a@x.test\r\nSubject: start\r\n" + strings.Repeat(" "+strings.Repeat("y", 900)+"\r\n", 60) + "\r\n",
	"From: a@x.test\r\nSubject:\r\nX-Dup:\r\nX-Dup:   \r\n\r\n",
	"From: a@x.test\r\nX-Odd@Name: odd\r\nx-odd@name: odd2\r\nSubject: nt\r\n\r\n",
	"From: J\xc3\xbcrgen <a@x.test>\r\nSubject: caf\xc3\xa9\r\n\r\n",
	"From: a@x.test\r\n" + strings.Repeat("X-Dup: d\r\n", 300) + "Subject: many\r\n\r\n",
	"", // no header at all: the message is body
	"From: a@x.test\r\nSubject: no empty line\r\n", // the body follows the fields directly
}

// TestHeaderProbe: across the process boundary, a plugin reading the
// header unparsed (msg.HeaderValue, HeaderValues, from several goroutines)
// gets the answers of the parsed header for every field name in several
// spellings, and a field it adds to msg.Header reads back as added; the
// same plugin asking for a parsed header too. Calls run concurrently.
func TestHeaderProbe(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "hdrprobe")
	if out, err := exec.Command("go", "build", "-o", bin, "./testdata/hdrprobe").CombinedOutput(); err != nil {
		t.Fatalf("building testdata/hdrprobe: %v\n%s", err, out)
	}
	for _, env := range [][]string{nil, {"PROBE_PARSED=1"}} {
		s, err := Start(Options{Name: "hdrprobe", Cmd: bin, Env: env, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for i, h := range probeHeaders {
			wg.Add(1)
			go func() {
				defer wg.Done()
				msg, err := pipeline.ParseMessage(&pipeline.Txn{Conn: &pipeline.Conn{ID: "c"}, ID: "t"}, []byte(h+"body\r\n"))
				if err != nil {
					t.Error(err)
					return
				}
				v, err := s.OnMessage(context.Background(), msg)
				if err != nil {
					t.Errorf("env %q, header %d: %v", env, i, err)
					return
				}
				got := map[string]string{}
				for _, e := range v.Edits.Headers {
					got[e.Name] = e.Value
				}
				// A header with fields comes unparsed when asked for;
				// none (an empty block) is parsed as usual.
				wantUnparsed := env == nil && msg.Header.Len() > 0
				if got["X-Probe-Mismatches"] != "0" || got["X-Probe-Mix"] != "true" ||
					got["X-Probe-Unparsed"] != map[bool]string{true: "true", false: "false"}[wantUnparsed] {
					t.Errorf("env %q, header %d %.60q: %q", env, i, h, got)
				}
			}()
		}
		wg.Wait()
		s.Close()
	}
}
