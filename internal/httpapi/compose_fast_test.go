package httpapi

import (
	"bytes"
	"mime/quotedprintable"
	"strings"
	"testing"
	"time"

	message "github.com/emersion/go-message"
)

// qpRef is what mime/quotedprintable.Writer writes for s.
func qpRef(s string) []byte {
	var b bytes.Buffer
	w := quotedprintable.NewWriter(&b)
	_, _ = w.Write([]byte(s))
	_ = w.Close()
	return b.Bytes()
}

var qpSeeds = []string{
	"", "a", " ", "\t", "a \n", "a\t\r\nb", "\r", "\n", "\r\r\n\n", "a\r=\nb", "=",
	strings.Repeat("x", 75), strings.Repeat("x", 76), strings.Repeat("x", 74) + " ", strings.Repeat("x", 73) + "=\n",
	strings.Repeat("x", 74) + "é", strings.Repeat("x", 75) + " \n", "héllo wörld\x00\x7f\x01 ",
	strings.Repeat("The quick brown fox jumps over the lazy dog 0123456789.\n", 34),
	strings.Repeat("a b\t", 40) + "\r\n",
}

func TestAppendQP(t *testing.T) {
	for _, s := range qpSeeds {
		if got, want := appendQP(nil, s), qpRef(s); !bytes.Equal(got, want) {
			t.Errorf("appendQP(%q) = %q, want %q", s, got, want)
		}
	}
}

func FuzzAppendQP(f *testing.F) {
	for _, s := range qpSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := appendQP([]byte("prefix\r\n"), s), append([]byte("prefix\r\n"), qpRef(s)...); !bytes.Equal(got, want) {
			t.Fatalf("appendQP(%q) = %q, want %q", s, got, want)
		}
	})
}

// TestComposeAsGoMessage: compose writes what message.CreateWriter and
// writePart write for the header it returns (single-part messages, which
// have no random boundary).
func TestComposeAsGoMessage(t *testing.T) {
	for _, m := range []*messageRequest{
		{From: "a@b.test", To: addrList{"c@d.test"}, Subject: "hi", Text: qpSeeds[len(qpSeeds)-2]},
		{From: "A <a@b.test>", To: addrList{"c@d.test"}, Subject: "héllo", HTML: "<p>x =  \n</p>  "},
		{From: "a@b.test", Bcc: addrList{"c@d.test"}, Text: "", Headers: map[string]string{"X-B": "2", "X-A": "1"}},
	} {
		v, e := validate("", m)
		if e != nil {
			t.Fatal(e)
		}
		now := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
		var got bytes.Buffer
		got.WriteString("junk")
		h, off, err := compose(&got, v, "01JD4Q7Z3M5XK2T0B9V8W6R1YA", "relay.test", now)
		if err != nil {
			t.Fatal(err)
		}
		var want bytes.Buffer
		w, err := message.CreateWriter(&want, h)
		if err != nil {
			t.Fatal(err)
		}
		wantOff := want.Len()
		if err := writePart(w, bodyTree(v)); err != nil {
			t.Fatal(err)
		}
		if g := got.Bytes()[4:]; !bytes.Equal(g, want.Bytes()) || off != wantOff {
			t.Errorf("compose: offset %d, %q\nwant offset %d, %q", off, g, wantOff, want.Bytes())
		}
	}
}
