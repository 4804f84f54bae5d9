package plugin

import (
	"context"
	"log/slog"
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

// TestStampHeaderForms: the stamp plugin reads the header left unparsed
// (sdk.HeaderReader, msg.HeaderValue) by default and parsed with
// STAMP_PARSED; both give the same verdicts, across the process boundary,
// for a header with the fields in odd case, folded and repeated.
func TestStampHeaderForms(t *testing.T) {
	cases := []struct {
		header string
		want   string // X-Stamp's value; "" for no field added
	}{
		{"Subject: hello\r\n\r\n", "checked"},
		{"sUBJECT:\r\n  folded subject\r\nFrom: a@x.example\r\n\r\n", "checked"},
		{"From: a@x.example\r\nSubject:   \r\n\r\n", "no-subject"},
		{"From: a@x.example\r\n\r\n", "no-subject"},
		{"Subject: s\r\nx-spam-score: 5.0\r\nX-Spam-Score: 1\r\n\r\n", ""},
		{"Subject: s\r\nX-Spam-Score:\r\n\r\n", "checked"},
	}
	for _, env := range [][]string{nil, {"STAMP_PARSED=1"}} {
		s, err := Start(Options{Name: "stamp", Cmd: stampBin, Env: env, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cases {
			msg, err := pipeline.ParseMessage(&pipeline.Txn{Conn: &pipeline.Conn{ID: "c"}, ID: "t"}, []byte(c.header+"body\r\n"))
			if err != nil {
				t.Fatal(err)
			}
			v, err := s.OnMessage(context.Background(), msg)
			if err != nil {
				t.Fatalf("env %q, header %q: %v", env, c.header, err)
			}
			got := ""
			if len(v.Edits.Headers) == 1 && v.Edits.Headers[0].Name == "X-Stamp" {
				got = v.Edits.Headers[0].Value
			} else if len(v.Edits.Headers) != 0 {
				t.Fatalf("env %q, header %q: edits %+v", env, c.header, v.Edits.Headers)
			}
			if got != c.want {
				t.Errorf("env %q, header %q: X-Stamp %q, want %q", env, c.header, got, c.want)
			}
		}
		s.Close()
	}
}
