package pipeline

import (
	"bytes"
	"slices"
	"testing"

	"github.com/emersion/go-message/textproto"
)

// rawHeaderBlocks are header blocks with the fields that make lookups
// differ if done naively: folded values (spaces, tabs, empty and blank
// continuation lines), duplicates, names in odd case, names that
// net/textproto does not canonicalize, spaces before the colon, empty
// values, a bare CR inside a value.
var rawHeaderBlocks = []string{
	"Subject: hello\r\n\r\n",
	"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi there  \r\nX-Spam-Score: 1.0\r\n\r\n",
	"Received: from a\r\n\tby b\r\n\twith ESMTP; Mon, 30 Nov 2026 10:00:00 +0000\r\nReceived: from c\r\n  by d\r\nsubject: lower\r\nSUBJECT: upper\r\nSuBjEcT: mixed\r\n\r\n",
	"X-Empty:\r\nX-Blank:   \r\nX-Folded-Empty:\r\n \r\n\tvalue after blank\r\n\r\n",
	"Subject : space before colon\r\nX-Odd@Name: not a token\r\nx-odd@name: lower not a token\r\nX_Under: token with underscore\r\n\r\n",
	"X-Cr: a\rb\r\nX-Cr-End: tail \r\r\nX-Tab:\tlead\ttab\t\r\n\r\n",
	"X-Dup: one\r\nX-Other: x\r\nx-dup: two\r\nX-DUP: three\r\n   folded three\r\n\r\n",
	"Content-Type: multipart/mixed;\r\n boundary=\"b1\"\r\nMIME-Version: 1.0\r\nDKIM-Signature: v=1; a=rsa-sha256;\r\n\tb=abc\r\n\tdef;\r\n\r\n",
	"X-Colon: a: b: c\r\nX-Utf8: caf\xc3\xa9\r\n\r\n",
}

var rawHeaderKeys = []string{
	"Subject", "subject", "SUBJECT", "From", "to", "received", "X-Spam-Score", "x-spam-score", "X-Missing",
	"X-Empty", "X-Blank", "X-Folded-Empty", "X-Odd@Name", "x-odd@name", "X-ODD@NAME", "X_Under", "x_under",
	"X-Cr", "X-Cr-End", "X-Tab", "X-Dup", "x-dup", "Content-Type", "content-type", "MIME-Version",
	"Mime-Version", "DKIM-Signature", "Dkim-Signature", "X-Colon", "X-Utf8", "", "Subject ", " Subject",
}

// The unparsed header gives the answers of the parsed one, field for
// field, and writes the same bytes.
func TestUnparsedHeaderMatchesParsed(t *testing.T) {
	for _, block := range rawHeaderBlocks {
		checkUnparsedAgainstParsed(t, block, rawHeaderKeys)
	}
}

func checkUnparsedAgainstParsed(t *testing.T, block string, keys []string) {
	t.Helper()
	want, ok := ParseHeaderBlock([]byte(block))
	if !ok {
		t.Fatalf("ParseHeaderBlock(%q) refused it", block)
	}
	m, ok := NewMessageUnparsed(nil, []byte(block), []byte("body\r\n"))
	if !ok {
		t.Fatalf("NewMessageUnparsed(%q) refused what ParseHeaderBlock takes", block)
	}
	for _, k := range keys {
		if got, w := m.HeaderValue(k), want.Get(k); got != w {
			t.Errorf("block %q: HeaderValue(%q) = %q, Header.Get gives %q", block, k, got, w)
		}
		if got, w := m.HeaderValues(k), want.Values(k); !slices.Equal(got, w) {
			t.Errorf("block %q: HeaderValues(%q) = %q, Header.Values gives %q", block, k, got, w)
		}
	}
	if !m.HeaderUnparsed() || m.Header.Len() != 0 {
		t.Fatalf("block %q: lookups parsed the header", block)
	}
	got, err := m.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if w := block + "body\r\n"; string(got) != w {
		t.Errorf("Bytes() = %q, want %q", got, w)
	}
}

func FuzzUnparsedHeader(f *testing.F) {
	for _, b := range rawHeaderBlocks {
		f.Add(b, "Subject")
	}
	f.Fuzz(func(t *testing.T, block, key string) {
		if _, ok := ParseHeaderBlock([]byte(block)); !ok {
			if _, ok := NewMessageUnparsed(nil, []byte(block), nil); ok {
				t.Fatalf("NewMessageUnparsed(%q) takes what ParseHeaderBlock refuses", block)
			}
			return
		}
		checkUnparsedAgainstParsed(t, block, append([]string{key}, rawHeaderKeys...))
	})
}

// ParseHeader gives Header the parsed fields, below any a hook added
// before; lookups and Bytes then see both.
func TestParseHeaderKeepsAddedFieldsOnTop(t *testing.T) {
	block := "Subject: s\r\nX-Dup: old\r\n\r\n"
	m, ok := NewMessageUnparsed(nil, []byte(block), []byte("b\r\n"))
	if !ok {
		t.Fatal("refused")
	}
	m.Header.Add("X-Dup", "new")
	m.Header.AddRaw([]byte("X-Top: raw\r\n"))
	if got := m.HeaderValue("x-dup"); got != "new" {
		t.Errorf("HeaderValue after an Add = %q, want the added field's value", got)
	}
	if m.HeaderUnparsed() {
		t.Error("still unparsed after a lookup with added fields")
	}
	if got := m.HeaderValues("X-Dup"); !slices.Equal(got, []string{"new", "old"}) {
		t.Errorf("HeaderValues = %q", got)
	}
	got, _ := m.Bytes()
	if want := "X-Top: raw\r\nX-Dup: new\r\nSubject: s\r\nX-Dup: old\r\n\r\nb\r\n"; string(got) != want {
		t.Errorf("Bytes() = %q, want %q", got, want)
	}

	// Parsing an untouched one gives exactly ParseHeaderBlock's header.
	m2, _ := NewMessageUnparsed(nil, []byte(block), nil)
	m2.ParseHeader()
	want, _ := ParseHeaderBlock([]byte(block))
	var a, b bytes.Buffer
	_ = textproto.WriteHeader(&a, m2.Header)
	_ = textproto.WriteHeader(&b, want)
	if a.String() != b.String() || m2.HeaderUnparsed() || m2.Header.Get("Subject") != "s" {
		t.Errorf("ParseHeader gave %q, want %q", a.String(), b.String())
	}
}

// Lookups of fields on one line do not allocate.
func TestHeaderValueAllocs(t *testing.T) {
	block := []byte(rawHeaderBlocks[1])
	m, _ := NewMessageUnparsed(nil, block, nil)
	n := testing.AllocsPerRun(100, func() {
		if m.HeaderValue("subject") != "hi there" || m.HeaderValue("X-Missing") != "" {
			t.Fatal("wrong value")
		}
	})
	if n != 0 {
		t.Errorf("HeaderValue: %v allocations, want 0", n)
	}
}

func TestNewMessageUnparsedRefuses(t *testing.T) {
	for _, b := range []string{"", "\r\n", "Subject: x\r\n", "Subject: x\n\n", " folded: x\r\n\r\n", "no colon\r\n\r\n",
		"Subject: x\r\n\r\nbody\r\n"} {
		if _, ok := NewMessageUnparsed(nil, []byte(b), nil); ok {
			t.Errorf("NewMessageUnparsed(%q) took it", b)
		}
	}
}

func BenchmarkHeaderLookup(b *testing.B) {
	block := []byte("Received: from client.example (client.example [192.0.2.1])\r\n\tby mx.example with ESMTPS; Mon, 30 Nov 2026 10:00:00 +0000\r\n" +
		"Return-Path: <a@example.com>\r\nDKIM-Signature: v=1; a=rsa-sha256; d=example.com;\r\n\tb=abcdef\r\nFrom: A <a@example.com>\r\n" +
		"To: B <b@example.net>\r\nSubject: benchmark\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\nX-Mailer: bench\r\nX-Bench: 1\r\n\r\n")
	b.Run("parsed", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			h, _ := ParseHeaderBlock(block)
			_, _ = h.Get("X-Spam-Score"), h.Get("Subject")
		}
	})
	b.Run("unparsed", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m, _ := NewMessageUnparsed(nil, block, nil)
			_, _ = m.HeaderValue("X-Spam-Score"), m.HeaderValue("Subject")
		}
	})
}
