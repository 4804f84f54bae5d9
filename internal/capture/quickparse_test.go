package capture

import (
	"math/rand/v2"
	"net/mail"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// TestQuickParseMatchesParse: for every message quickParse reads, the
// summary is the one the MIME parser gives (over hand-picked and random
// headers: folding, bare LF, encoded words, odd keys, duplicates,
// charsets, encodings); it reads the common plain-text messages and
// leaves the others to the parser.
func TestQuickParseMatchesParse(t *testing.T) {
	same := func(t *testing.T, data []byte) bool {
		t.Helper()
		q, ok := quickParse(data)
		if !ok {
			return false
		}
		if got, want := q, summaryOf(parse(data, false)); !reflect.DeepEqual(got, want) {
			t.Fatalf("%q:\nquick  %+v\nparser %+v", data, got, want)
		}
		return true
	}
	for _, c := range []struct {
		data  string
		quick bool
	}{
		{"From: A <a@s.test>\r\nTo: b@d.test, \"C\" <c@d.test>\r\nSubject: Your order\r\nMessage-ID: <x@s.test>\r\n\r\nHello\r\n", true},
		{"From: a@s.test\nTo: b@d.test\nSubject: =?UTF-8?Q?Caf=C3=A9?= menu\n\nbody\n", true},
		{"From: a@s.test\r\nSubject: folded\r\n  across\r\n\tlines \r\nCc: x@d.test,\r\n y@d.test\r\nContent-Type: text/plain; charset=US-ASCII; format=flowed\r\nContent-Transfer-Encoding: 7BIT\r\n\r\nbody", true},
		{"Subject: =?iso-8859-1?q?caf=E9?=\r\nsubject: second\r\nMESSAGE-ID:  <y@s.test> \r\n\r\n", true},
		{"Subject: =?koi8-r?B?8NLJ18XU?=\r\nSubject: =?x-unknown?q?zz?=\r\n\r\nb", true},
		{"X-Empty:\r\n: no key\r\nSubject: s\r\n\r\nb", true},
		{"Subject: s\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\ncaf\xe9", false},
		{"Subject: s\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\na=3Db", false},
		{"Subject: s\r\nContent-Type: text/html\r\n\r\n<p>x</p>", false},
		{"Subject: s\r\nContent-Type: text/plain; name=a.txt\r\n\r\nx", false},
		{"Subject: s\r\nContent-Disposition: inline\r\n\r\nx", false},
		{"Subject: s\r\nContent-Type: multipart/alternative; boundary=X\r\n\r\n--X\r\n\r\nx\r\n--X--\r\n", false},
		{"Subject: s\r\nContent-Type: text/plain\r\nContent-Type: text/html\r\n\r\nx", false},
		{"Subject: no blank line\r\n", false},
		{" Subject: leading space\r\n\r\nx", false},
		{"Sub ject: s\r\n\r\nx", false},
		{"Subject: s\r\nno colon here\r\n\r\nx", false},
		{"", false},
	} {
		if got := same(t, []byte(c.data)); got != c.quick {
			t.Errorf("%q: quick %v, want %v", c.data, got, c.quick)
		}
	}
	// Random headers from pieces, some of which the parser alone reads.
	keys := []string{"From", "from", "To", "TO", "Cc", "Subject", "SUBJECT", "Message-Id", "Message-ID", "X-Other", "Received",
		"Content-Type", "content-type", "Content-Transfer-Encoding", "Reply-To", "Sub ject", ""}
	values := []string{"a@s.test", "A B <a@s.test>", "a@s.test, b@d.test", "=?UTF-8?B?w6ljb2xl?=", "=?utf-8?q?a_b?= c",
		"", " ", "text/plain", "text/plain; charset=utf-8", "text/plain; charset=\"UTF-8\"", "text/plain; charset=latin1",
		"text/html", "8bit", "binary", "base64", "<id@s.test>", "x\ty", "bad \"quote"}
	ends := []string{"\r\n", "\n", "\r\n", "\r\r\n"}
	r := rand.New(rand.NewPCG(23, 1))
	quick := 0
	for i := 0; i < 5000; i++ {
		var b strings.Builder
		for n := r.IntN(8); n > 0; n-- {
			b.WriteString(keys[r.IntN(len(keys))])
			if r.IntN(10) > 0 {
				b.WriteString(":")
			}
			if r.IntN(2) == 0 {
				b.WriteString(" ")
			}
			b.WriteString(values[r.IntN(len(values))])
			if r.IntN(6) == 0 {
				b.WriteString(ends[r.IntN(len(ends))] + []string{" ", "\t", "  "}[r.IntN(3)] + values[r.IntN(len(values))])
			}
			b.WriteString(ends[r.IntN(len(ends))])
		}
		if r.IntN(20) > 0 {
			b.WriteString(ends[r.IntN(2)])
		}
		b.WriteString([]string{"", "body\r\n", "a\nb", "é\r\n\r\nmore"}[r.IntN(4)])
		if same(t, []byte(b.String())) {
			quick++
		}
	}
	if quick < 500 {
		t.Fatalf("quickParse read %d of 5000 random messages", quick)
	}
}

// BenchmarkParseSummary: a capture's summary parse of a 2 KB plain-text
// message as sluice-bench sends it (with the relay's trace fields), by
// quickParse and by the MIME parser.
func BenchmarkParseSummary(b *testing.B) {
	data := []byte("Received: from [127.0.0.1] (localhost [127.0.0.1])\r\n\tby relay.bench.test (sluice) with ESMTP id 01J0000000000000000000000\r\n\tfor <b@sink.test>; Mon, 30 Nov 2026 19:00:00 +0000\r\n" +
		"X-Bench: 1\r\nFrom: a@x.test\r\nTo: b@sink.test\r\nSubject: bench 1 run\r\nDate: Mon, 30 Nov 2026 19:00:00 +0000\r\n" +
		"Message-ID: <1.run@sluice-bench.invalid>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" +
		strings.Repeat("abcdefghij klmnopqrst uvwxyzabcd efghijklmn opqrstuvwx yzabcdefgh ijklmnop\r\n", 22))
	for _, c := range []struct {
		name string
		fn   func([]byte) summaryFields
	}{
		{"quick", func(d []byte) summaryFields { f, _ := quickParse(d); return f }},
		{"parser", func(d []byte) summaryFields { return summaryOf(parse(d, false)) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				_ = c.fn(data)
			}
		})
	}
}

// TestSimpleAddrsMatchesMailParser: every field simpleAddrs reads gives
// the addresses mail.ParseAddressList gives (random fields from pieces
// of plain and not-so-plain addresses); it reads the plain ones.
func TestSimpleAddrsMatchesMailParser(t *testing.T) {
	pieces := []string{"a", "B", "x.y", "o'n", "_", "+", "-", "9", ".", "..", "@", "@", "<", ">", ",", ", ", " ", "\t", "\"q\"", "(c)", "[1.2.3.4]", "=?", "é", "!", "#", "*", ":", ";"}
	r := rand.New(rand.NewPCG(23, 9))
	read := 0
	for i := 0; i < 200000; i++ {
		var b strings.Builder
		for n := 1 + r.IntN(8); n > 0; n-- {
			b.WriteString(pieces[r.IntN(len(pieces))])
		}
		v := b.String()
		got, ok := simpleAddrs(v)
		if !ok {
			continue
		}
		read++
		l, err := mail.ParseAddressList(v)
		if err != nil {
			t.Fatalf("%q: simpleAddrs read %q, the mail parser fails: %v", v, got, err)
		}
		var want []string
		for _, a := range l {
			if a.Name != "" {
				t.Fatalf("%q: simpleAddrs read %q, the mail parser finds a name %q", v, got, a.Name)
			}
			want = append(want, a.Address)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%q: simpleAddrs %q, mail parser %q", v, got, want)
		}
	}
	for _, v := range []string{"a@b.test", "<a@b.test>", "a@b.test, <c.d+e@f-g.test>", " a_b@c.test\t"} {
		if _, ok := simpleAddrs(v); !ok {
			t.Errorf("%q: not read", v)
		}
	}
	if read < 100 {
		t.Fatalf("simpleAddrs read %d random fields", read)
	}
}
