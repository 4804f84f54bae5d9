package pipeline

import (
	"bytes"
	"io"
	stdtextproto "net/textproto"
	"strings"
	"testing"

	"github.com/emersion/go-message/textproto"
)

// TestApplyHeaderEditsStoresFolded: a header edit stores the field as
// FoldField formats it (writing the header copies those bytes), and Get
// reads back the value trimmed of its end blanks.
func TestApplyHeaderEditsStoresFolded(t *testing.T) {
	long := strings.Repeat("word ", 30)
	for _, c := range []struct{ name, value string }{
		{"X-Stamp", "checked"},
		{"x-spam-score", "3.5"},
		{"X-Empty", ""},
		{"X-Utf8", "héllo wörld"},
		{"X-Long", long},
		{"Received", benchReceived},
		{"X-Long-Word", strings.Repeat("x", 200)},
		{"X-Long-Blanks", strings.Repeat("ab  ", 40)},
		{"X-Long-Tabs", strings.Repeat("ab\t", 60)},
		{"X-Long-Lead", " " + long},
		{"X-Lead", " padded"},
		{"X-Trail", "padded\t"},
	} {
		var h textproto.Header
		h.Add("Subject", "s")
		ApplyHeaderEdits(&h, []HeaderEdit{{Op: HeaderAdd, Name: c.name, Value: c.value}})
		want, err := FoldField(stdtextproto.CanonicalMIMEHeaderKey(c.name), c.value)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := textproto.WriteHeader(&b, h); err != nil || b.String() != string(want)+"Subject: s\r\n\r\n" {
			t.Errorf("%q: %q: written %q (%v), want %q first", c.name, c.value, b.String(), err, want)
		}
		if g, w := h.Get(c.name), strings.Trim(c.value, " \t"); g != w {
			t.Errorf("%q: Get %q, want %q", c.name, g, w)
		}
	}
	// A bad name or a line break is left to h.Add, whose write fails.
	for _, c := range []struct{ name, value string }{{"Bad Name", "v"}, {"X-Break", "a\r\nb"}} {
		var h textproto.Header
		ApplyHeaderEdits(&h, []HeaderEdit{{Op: HeaderAdd, Name: c.name, Value: c.value}})
		if err := textproto.WriteHeader(io.Discard, h); err == nil {
			t.Errorf("%q: %q written", c.name, c.value)
		}
	}
	// Set replaces every field of the name by one.
	var h textproto.Header
	h.Add("X-A", "1")
	h.Add("X-A", "2")
	ApplyHeaderEdits(&h, []HeaderEdit{{Op: HeaderSet, Name: "x-a", Value: "3"}})
	var b bytes.Buffer
	if err := textproto.WriteHeader(&b, h); err != nil || b.String() != "X-A: 3\r\n\r\n" {
		t.Fatalf("set: %q %v", b.String(), err)
	}
}

// TestAddHeaderFieldFormatsOnce: a folded field (the relay's Received)
// added with AddHeaderField is stored as written: writing the header
// formats nothing again (no allocation of its own), where h.Add's is formatted at
// every write.
func TestAddHeaderFieldFormatsOnce(t *testing.T) {
	const received = "from client.example (client.example [192.0.2.1]) by relay.example with ESMTP id 01JDXYZABCDEFGHJKMNPQRSTVW; Mon, 30 Nov 2026 08:00:00 +0000"
	var stored, added textproto.Header
	AddHeaderField(&stored, "Received", received)
	added.Add("Received", received)
	var buf bytes.Buffer
	buf.Grow(4096)
	write := func(h textproto.Header) float64 {
		return testing.AllocsPerRun(20, func() {
			buf.Reset()
			if err := textproto.WriteHeader(&buf, h); err != nil {
				t.Fatal(err)
			}
		})
	}
	base := write(textproto.Header{}) // WriteHeader's own (the final CRLF)
	if n := write(stored); n != base {
		t.Errorf("writing the stored field: %v allocations, want %v (as for no field)", n, base)
	}
	if n := write(added); n <= base {
		t.Error("writing h.Add's field allocated nothing: the test no longer tells the two apart")
	}
}
