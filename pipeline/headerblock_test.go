package pipeline

import (
	"reflect"
	"strings"
	"testing"
)

// ParseHeaderBlock gives the header ParseMessage gives, field for field, for
// every block Sluice writes, and refuses (for ParseMessage to parse)
// everything else.
func TestParseHeaderBlock(t *testing.T) {
	for _, c := range []struct {
		block string
		ok    bool
	}{
		{"Subject: hi\r\n\r\n", true},
		{"Received: from a\r\n\tby b; Mon, 1 Jan 2026 00:00:00 +0000\r\nSubject: hi\r\nX-A: 1\r\nx-a:  2 \r\n\r\n", true},
		{"From : a@example.com\r\nSubject : spaced\r\nX-Tab\t: tab\r\nX-Empty:\r\n\r\n", true},
		{"X-Fold: a\r\n  b\r\n \r\n c\r\n\r\n", true},
		{strings.Repeat("X-Many: v\r\n", 40) + "\r\n", true},
		{"\r\n", false}, // no field: ParseMessage's
		{"From a@example.com  Mon Jan 1\r\nSubject: x\r\n\r\n", false}, // mbox line
		{" folded first\r\nSubject: x\r\n\r\n", false},
		{"Subject: x\n\r\n", false}, // LF line end
		{"Subject: x\r\nno colon\r\n\r\n", false},
		{"Sub ject: x\r\n\r\n", false},
		{": empty name\r\n\r\n", false},
		{"Subject: x\r\n", false},             // no empty line
		{"Subject: x\r\n\r\nbody\r\n", false}, // more after it
		{"Subject: x\r\n\r\n\r\n", false},
		{"Subject: \xff\x00\r\n\r\n", true}, // values are bytes
	} {
		h, ok := ParseHeaderBlock([]byte(c.block))
		if ok != c.ok {
			t.Errorf("%q: ok %v, want %v", c.block, ok, c.ok)
			continue
		}
		if !ok {
			continue
		}
		want, err := ParseMessage(nil, []byte(c.block))
		if err != nil || len(want.Body) != 0 {
			t.Fatalf("%q: ParseMessage: %v, body %q", c.block, err, want.Body)
		}
		if !reflect.DeepEqual(h, want.Header) {
			t.Errorf("%q: header differs from ParseMessage's", c.block)
		}
		m := &Message{Header: h}
		if b, err := m.Bytes(); err != nil || string(b) != c.block {
			t.Errorf("%q: written back as %q (%v)", c.block, b, err)
		}
		// Prepending a field works as on a parsed header.
		h.Add("X-New", "1")
		want.Header.Add("X-New", "1")
		if !reflect.DeepEqual(h, want.Header) {
			t.Errorf("%q: header after Add differs", c.block)
		}
	}
}
