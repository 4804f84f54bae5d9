package capture

import (
	"reflect"
	"strings"
	"testing"
)

// TestQuickParseLongLines: header lines longer than the MIME parser's
// 4 KiB read buffer (a line ending split across two reads, CRLF, LF,
// CR CR LF, folded or not) give the summary the parser gives.
func TestQuickParseLongLines(t *testing.T) {
	quick := 0
	for _, n := range []int{4000, 4093, 4094, 4095, 4096, 4097, 8190, 8191, 8192} {
		for _, end := range []string{"\r\n", "\n", "\r\r\n"} {
			for _, fold := range []string{"", "\r\n ", "\n\t"} {
				data := []byte("From: a@x.test\r\nSubject: " + strings.Repeat("w ", n/2+1)[:n] + fold + "x" + end + "To: b@x.test\r\n\r\nbody")
				q, ok := quickParse(data)
				if !ok {
					continue
				}
				quick++
				if got, want := q, summaryOf(parse(data, false)); !reflect.DeepEqual(got, want) {
					t.Errorf("line of %d, end %q, fold %q: quick %+v, parser %+v", n, end, fold, got, want)
				}
			}
		}
	}
	if quick < 54 {
		t.Fatalf("quickParse read %d of 81", quick)
	}
}

// TestWordIndexMatchesScanUnicode is TestWordIndexMatchesScan over
// words whose lower case changes their length or splits them (İ, ǅ,
// ﬁ), combining marks, final sigma, zero-width spaces, no-break
// spaces, superscripts and an invalid byte.
func TestWordIndexMatchesScanUnicode(t *testing.T) {
	old := vocab
	defer func() { vocab = old }()
	vocab = []string{"İstanbul", "ı", "i", "cafe\u0301", "café", "ǅemal", "ﬁle", "Σίσυφος", "σ", "ς", "K", "k", "x²", "٣٤", "a'b",
		"o'neil", "e-mail", "a", "b", "ab", "\u00a0", "ß", "SS", "日本語", "本", "ab\u200bcd", "x\u0301y", "\xff", "ǆ"}
	TestWordIndexMatchesScan(t)
}
