package pipeline

import (
	"bytes"
	stdtextproto "net/textproto"
	"strings"
	"testing"

	"github.com/emersion/go-message/textproto"
)

// TestApplyHeaderEditsWritesAsAdd: a header edit gives the header the
// same bytes on the wire and the same values as textproto's Add, whether
// it takes the pre-formatted one-line path or not (long values are folded,
// odd ones left to Add); the one-line path stores the field's bytes.
func TestApplyHeaderEditsWritesAsAdd(t *testing.T) {
	long := strings.Repeat("word ", 30)
	for _, c := range []struct {
		name, value string
		raw         bool // expected to take the one-line path
	}{
		{"X-Stamp", "checked", true},
		{"x-spam-score", "3.5", true},
		{"X-Empty", "", true},
		{"X-Utf8", "héllo wörld", true},
		{"X-Long", long, false},
		{"Received", "from client.example (client.example [192.0.2.1]) by relay.example with ESMTP id 01JDXYZABCDEFGHJKMNPQRSTVW; Mon, 30 Nov 2026 08:00:00 +0000", false},
		{"X-Long-Word", strings.Repeat("x", 200), false},
		{"X-Long-Blanks", strings.Repeat("ab  ", 40), false},
		{"X-Long-Tabs", strings.Repeat("ab\t", 60), false},
		{"X-Long-Lead", " " + long, false},
		{"Bad Name", long, false},
		{"X-Long-Break", long + "\r\n" + long, false},
		{"X-Lead", " padded", false},
		{"X-Trail", "padded\t", false},
		{"X-Break", "a\r\nb", false},
		{"Bad Name", "v", false},
	} {
		var want, got textproto.Header
		want.Add("Subject", "s")
		got.Add("Subject", "s")
		want.Add(c.name, c.value)
		ApplyHeaderEdits(&got, []HeaderEdit{{Op: HeaderAdd, Name: c.name, Value: c.value}})
		var wb, gb bytes.Buffer
		werr, gerr := textproto.WriteHeader(&wb, want), textproto.WriteHeader(&gb, got)
		if (werr == nil) != (gerr == nil) || wb.String() != gb.String() {
			t.Errorf("%q: %q: written %q (%v), want %q (%v)", c.name, c.value, gb.String(), gerr, wb.String(), werr)
		}
		if g, w := got.Get(c.name), want.Get(c.name); g != w {
			t.Errorf("%q: Get %q, want %q", c.name, g, w)
		}
		f := got.FieldsByKey(c.name)
		if !f.Next() {
			t.Fatalf("%q: not added", c.name)
		}
		if raw, _ := f.Raw(); c.raw && !bytes.HasSuffix(raw, []byte("\r\n")) {
			t.Errorf("%q: %q: no stored one-line bytes (%q)", c.name, c.value, raw)
		}
		if c.raw != oneLineField(stdtextproto.CanonicalMIMEHeaderKey(c.name), c.value) {
			t.Errorf("%q: %q: one-line path %v, want %v", c.name, c.value, !c.raw, c.raw)
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
