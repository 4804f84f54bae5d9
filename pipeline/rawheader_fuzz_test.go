package pipeline

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-message/textproto"
)

// FuzzUnparsedVsParseMessage: for a header block NewMessageUnparsed takes,
// the lookups give what the relay's own parser (ParseMessage, go-message's
// ReadHeader) gives, not only ParseHeaderBlock.
func FuzzUnparsedVsParseMessage(f *testing.F) {
	for _, b := range rawHeaderBlocks {
		f.Add(b, "Subject")
	}
	f.Fuzz(func(t *testing.T, block, key string) {
		m, ok := NewMessageUnparsed(nil, []byte(block), nil)
		if !ok {
			return
		}
		p, err := ParseMessage(nil, []byte(block))
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Body) != 0 {
			t.Fatalf("ParseMessage(%q) left body %q", block, p.Body)
		}
		for _, k := range append([]string{key}, rawHeaderKeys...) {
			if got, w := m.HeaderValue(k), p.Header.Get(k); got != w {
				t.Errorf("block %q: HeaderValue(%q) = %q, ParseMessage's Get %q", block, k, got, w)
			}
			if got, w := m.HeaderValues(k), p.Header.Values(k); !slices.Equal(got, w) {
				t.Errorf("block %q: HeaderValues(%q) = %q, ParseMessage's Values %q", block, k, got, w)
			}
		}
	})
}

// A field a hook adds to Header before the header is parsed reads back
// as it was added, as it does when added after parsing (ParseHeader's
// promise), even when formatting it changes how it reads (blanks at its
// ends, runs of blanks where it is folded).
func TestParseHeaderKeepsAddedValues(t *testing.T) {
	long := strings.Repeat("ab  ", 30)
	for _, v := range []string{" padded ", "tail\t", long, "plain"} {
		m, ok := NewMessageUnparsed(nil, []byte("Subject: s\r\nX-A: old\r\n\r\n"), nil)
		if !ok {
			t.Fatal("refused")
		}
		m.Header.Add("X-A", v)
		want, _ := ParseHeaderBlock([]byte("Subject: s\r\nX-A: old\r\n\r\n"))
		want.Add("X-A", v)
		if got := m.HeaderValue("X-A"); got != want.Get("X-A") {
			t.Errorf("HeaderValue after Add(%q) = %q, want %q", v, got, want.Get("X-A"))
		}
		if got := m.HeaderValues("x-a"); !slices.Equal(got, want.Values("X-A")) {
			t.Errorf("HeaderValues after Add(%q) = %q, want %q", v, got, want.Values("X-A"))
		}
		var wb bytes.Buffer
		_ = textproto.WriteHeader(&wb, want)
		if got, _ := m.HeaderBytes(); string(got) != wb.String() {
			t.Errorf("HeaderBytes after Add(%q) = %q, want %q", v, got, wb.String())
		}
	}
}
