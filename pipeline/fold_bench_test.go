package pipeline

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-message/textproto"
)

// benchReceived is a typical relay-added field (two lines once folded).
const benchReceived = "from client.example (client.example [192.0.2.1]) by relay.example with ESMTP id 01JDXYZABCDEFGHJKMNPQRSTVW; Mon, 30 Nov 2026 08:00:00 +0000"

// benchAuthResults is the Authentication-Results value of n results whose
// reason and properties are about size bytes of short words.
func benchAuthResults(n, size int) string {
	rs := make([]AuthResult, n)
	for i := range rs {
		rs[i] = AuthResult{Method: "x-check", Result: "pass", Reason: strings.Repeat("word ", size/5)[:size-1]}
	}
	return AuthenticationResults("relay.example", rs)
}

// BenchmarkAddHeaderField: adding one field with AddHeaderField (folded
// once, stored raw) and writing the header once, as the spool does.
func BenchmarkAddHeaderField(b *testing.B) {
	for _, c := range []struct {
		name, field, value string
	}{
		{"short", "X-Spam-Score", "3.5"},
		{"received", "Received", benchReceived},
		{"64KiB", "X-Big", strings.Repeat("word ", 64<<10/5)},
		{"auth-results-640KB", "Authentication-Results", benchAuthResults(10, 64<<10)},
		{"auth-results-6.4MB", "Authentication-Results", benchAuthResults(100, 64<<10)},
	} {
		if len(c.value) > 1<<20 && testing.Short() {
			continue // go-message's folding took minutes for it
		}
		b.Run(c.name, func(b *testing.B) {
			var buf bytes.Buffer
			b.SetBytes(int64(len(c.value)))
			b.ReportAllocs()
			for b.Loop() {
				var h textproto.Header
				AddHeaderField(&h, c.field, c.value)
				buf.Reset()
				if err := textproto.WriteHeader(&buf, h); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAddHeaderEditWrites: a header edit's field written n times (the
// spool, a plugin's header block, delivery): a field left to h.Add is
// folded again at every write.
func BenchmarkAddHeaderEditWrites(b *testing.B) {
	for _, v := range []string{strings.Repeat("ab  ", 40), strings.Repeat("word ", 64<<10/5)} {
		b.Run(fmt.Sprintf("%dB", len(v)), func(b *testing.B) {
			var buf bytes.Buffer
			b.ReportAllocs()
			for b.Loop() {
				var h textproto.Header
				ApplyHeaderEdits(&h, []HeaderEdit{{Op: HeaderAdd, Name: "X-Edit", Value: v}})
				for range 3 {
					buf.Reset()
					if err := textproto.WriteHeader(&buf, h); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// BenchmarkFoldField: FoldField alone, on values of words, of tab-separated
// words (folded at tabs past 998), and on the fallback path (long blank
// runs around long words).
func BenchmarkFoldField(b *testing.B) {
	for _, c := range []struct{ name, value string }{
		{"words-64KiB", strings.Repeat("word ", 64<<10/5)},
		{"tabs-64KiB", strings.Repeat("abcdefghi\t", 64<<10/10)},
		{"words-6.4MB", benchAuthResults(100, 64<<10)},
		{"fallback", "ab\t" + strings.Repeat("c", 400) + strings.Repeat(" ", 1190) + strings.Repeat("d", 400)},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(c.value)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := FoldField("X-Field", c.value); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
