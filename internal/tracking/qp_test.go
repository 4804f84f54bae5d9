package tracking

import (
	"bytes"
	"io"
	"mime/quotedprintable"
	"testing"
)

// FuzzDecodeQP: for any text, decodeQP of its quoted-printable encoding
// (mime/quotedprintable's Writer) is what mime/quotedprintable's Reader
// decodes.
func FuzzDecodeQP(f *testing.F) {
	f.Add([]byte("<a href=\"https://x.example/?a=1&b=2\">caf\xc3\xa9</a>  \r\nline two\t\r\n" + string(bytes.Repeat([]byte("long "), 40))))
	f.Add([]byte("a\nb\r\nc\rd= =\r\n"))
	f.Fuzz(func(t *testing.T, text []byte) {
		enc := qp(text)
		want, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(enc)))
		if err != nil {
			t.Skip()
		}
		if got := decodeQP(nil, enc); !bytes.Equal(got, want) {
			t.Fatalf("decodeQP(%q) = %q, want %q", enc, got, want)
		}
	})
}

func TestDecodeQPLenient(t *testing.T) {
	for in, want := range map[string]string{
		"a=3Db=\r\nc\r\n":     "a=bc\r\n",
		"soft= \t\r\nnext":    "softnext",
		"pad  \r\nx":          "pad\r\nx",
		"bad=zz=4":            "bad=zz=4",
		"lf only=\nx\ny":      "lf onlyx\r\ny",
		"=E2=9C=93 done=\r\n": "\xe2\x9c\x93 done",
	} {
		if got := string(decodeQP(nil, []byte(in))); got != want {
			t.Errorf("%q: got %q, want %q", in, got, want)
		}
	}
}
