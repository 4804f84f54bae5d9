package pipeline

import "testing"

// TestParseMessageFromFieldWithSpace: a first line "From : addr" (white
// space before the colon, RFC 5322 section 4.5.3) is the From field, not
// an mbox "From " line: it is kept, stages see it, Bytes writes it back.
func TestParseMessageFromFieldWithSpace(t *testing.T) {
	for _, first := range []string{"From : ceo@example.com", "From \t: ceo@example.com"} {
		raw := first + "\r\nSubject: s\r\n\r\nbody\r\n"
		m, err := ParseMessage(&Txn{}, []byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		if got := m.Header.Values("From"); len(got) != 1 || got[0] != "ceo@example.com" {
			t.Errorf("%q: From fields %q; want the one field", first, got)
		}
		if out, _ := m.Bytes(); string(out) != raw {
			t.Errorf("%q: written back as %q", first, out)
		}
	}
}
