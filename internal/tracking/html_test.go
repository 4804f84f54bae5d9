package tracking

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/corpus")

// recorder is a Link function that numbers the links it sees.
type recorder struct{ urls []string }

func (r *recorder) link(u string) string {
	r.urls = append(r.urls, u)
	return fmt.Sprintf("https://t.test/t/c/%d", len(r.urls)-1)
}

const testPixel = `<img src="https://t.test/t/o/P" width="1" height="1" alt="">`

// TestCorpus rewrites every testdata/corpus/*.html (real-world-like
// mail: nested tables, entities, upper-case tags and attributes, <base
// href>, links in comments and conditional comments, raw text elements,
// malformed markup) and compares the output and the list of tracked
// links with the committed golden files (-update rewrites them; review
// the diff). Every other byte of the input must be in the output
// unchanged: the output with the tracked values put back and the pixel
// removed is the input.
func TestCorpus(t *testing.T) {
	files, _ := filepath.Glob("testdata/corpus/*.html")
	if len(files) < 6 {
		t.Fatalf("corpus has %d files", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if same, n := RewriteHTML(nil, src, HTMLOptions{}); !bytes.Equal(same, src) || n != 0 {
				t.Fatalf("with nothing to do the output differs from the input")
			}
			var rec recorder
			out, n := RewriteHTML(nil, src, HTMLOptions{Link: rec.link, Pixel: testPixel})
			if n != len(rec.urls) {
				t.Fatalf("reported %d links, tracked %d", n, len(rec.urls))
			}
			if bytes.Count(out, []byte(testPixel)) != 1 {
				t.Fatalf("the pixel is not in the output exactly once")
			}
			golden, links := strings.TrimSuffix(f, ".html")+".golden", strings.TrimSuffix(f, ".html")+".links"
			gotLinks := strings.Join(rec.urls, "\n") + "\n"
			if *update {
				_ = os.WriteFile(golden, out, 0o644)
				_ = os.WriteFile(links, []byte(gotLinks), 0o644)
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, want) {
				t.Errorf("output differs from %s:\n%s", golden, out)
			}
			wantLinks, _ := os.ReadFile(links)
			if gotLinks != string(wantLinks) {
				t.Errorf("tracked links:\n%s\nwant (%s):\n%s", gotLinks, links, wantLinks)
			}
			checkOnlyHrefsChanged(t, src, out, len(rec.urls))
		})
	}
}

// checkOnlyHrefsChanged: removing the pixel and turning each tracked
// value back into the input's bytes gives the input: walk both, and at
// each "https://t.test/t/c/N" in out skip the input up to the end of
// the attribute value it replaced.
func checkOnlyHrefsChanged(t *testing.T, src, out []byte, n int) {
	t.Helper()
	out = bytes.Replace(out, []byte(testPixel), nil, 1)
	i, j := 0, 0
	for k := 0; k < n; k++ {
		mark := []byte(fmt.Sprintf("https://t.test/t/c/%d", k))
		at := bytes.Index(out[j:], mark)
		if at < 0 {
			t.Fatalf("tracked link %d not in the output", k)
		}
		if !bytes.Equal(out[j:j+at], src[i:i+at]) {
			t.Fatalf("bytes before tracked link %d differ:\nout %q\nsrc %q", k, out[j:j+at], src[i:min(i+at, len(src))])
		}
		i += at
		j += at + len(mark)
		// The replaced value ends at its closing quote, or at white
		// space or '>' when unquoted.
		q := src[i-1]
		for i < len(src) {
			c := src[i]
			if (q == '"' || q == '\'') && c == q || q != '"' && q != '\'' && (isSpace(c) || c == '>') {
				break
			}
			i++
		}
	}
	if !bytes.Equal(out[j:], src[i:]) {
		t.Fatalf("bytes after the last tracked link differ:\nout %q\nsrc %q", out[j:], src[i:])
	}
}

// TestLinkRules spells out what is and is not tracked.
func TestLinkRules(t *testing.T) {
	for _, tt := range []struct {
		html string
		want []string // tracked, in order
	}{
		{`<a href="https://a.example/x?a=1&amp;b=2">`, []string{"https://a.example/x?a=1&b=2"}},
		{`<A HREF="http://a.example/">`, []string{"http://a.example/"}},
		{`<a href="mailto:x@a.example">`, nil},
		{`<a href="tel:+1">`, nil},
		{`<a href="#x">`, nil},
		{`<a href="/relative">`, nil},
		{`<a href="https://a.example/unsubscribe?u=1">`, nil},
		{`<a href="https://a.example/Opt-Out">`, nil},
		{`<a data-sluice-notrack href="https://a.example/">`, nil},
		{`<a clicktracking=off href="https://a.example/">`, nil},
		{`<!-- <a href="https://a.example/c"> -->`, nil},
		{`<link href="https://a.example/style.css" rel="stylesheet">`, nil},
		{`<base href="https://b.example/d/"><a href="e">`, []string{"https://b.example/d/e"}},
		{`<a href="https://t.test/already">`, nil}, // Skip: our own host
	} {
		var rec recorder
		out, _ := RewriteHTML(nil, []byte(tt.html), HTMLOptions{Link: rec.link, Skip: func(u string) bool { return strings.HasPrefix(u, "https://t.test/") }})
		if strings.Join(rec.urls, " ") != strings.Join(tt.want, " ") {
			t.Errorf("%s: tracked %q, want %q (output %s)", tt.html, rec.urls, tt.want, out)
		}
	}
}

// TestPixelPlacement: before the last </body>, else </html>, else at
// the end.
func TestPixelPlacement(t *testing.T) {
	for in, want := range map[string]string{
		"<html><body>x</body></html>":  "<html><body>x" + testPixel + "</body></html>",
		"<html><body>x</BODY ></html>": "<html><body>x" + testPixel + "</BODY ></html>",
		"<html>x</html>":               "<html>x" + testPixel + "</html>",
		"<h1>Invoice #1234</h1>":       "<h1>Invoice #1234</h1>" + testPixel,
		"<p>a</body><p>b</body>":       "<p>a</body><p>b" + testPixel + "</body>",
	} {
		if out, _ := RewriteHTML(nil, []byte(in), HTMLOptions{Pixel: testPixel}); string(out) != want {
			t.Errorf("%s:\ngot  %s\nwant %s", in, out, want)
		}
	}
}

func TestRewriteText(t *testing.T) {
	var rec recorder
	in := "See https://a.example/x. Or (https://a.example/y), <http://b.example/z?q=1>\r\nhttps://a.example/unsubscribe stays; mailto:x@y stays; xhttps://no.example stays\r\n"
	out, n := RewriteText(nil, []byte(in), rec.link, nil)
	want := "See https://t.test/t/c/0. Or (https://t.test/t/c/1), <https://t.test/t/c/2>\r\nhttps://a.example/unsubscribe stays; mailto:x@y stays; xhttps://no.example stays\r\n"
	if string(out) != want || n != 3 {
		t.Fatalf("got %q (%d)\nwant %q", out, n, want)
	}
	if strings.Join(rec.urls, " ") != "https://a.example/x https://a.example/y http://b.example/z?q=1" {
		t.Fatalf("urls %q", rec.urls)
	}
}

// FuzzRewriteHTML: never panics; with nothing to track the output is
// the input; with links tracked, only href values change.
func FuzzRewriteHTML(f *testing.F) {
	files, _ := filepath.Glob("testdata/corpus/*.html")
	for _, p := range files {
		b, _ := os.ReadFile(p)
		f.Add(b)
	}
	f.Add([]byte(`<a href=x`))
	f.Add([]byte(`<a href="https://a.example/`))
	f.Fuzz(func(t *testing.T, src []byte) {
		if out, _ := RewriteHTML(nil, src, HTMLOptions{}); !bytes.Equal(out, src) {
			t.Fatalf("identity broken")
		}
		var rec recorder
		out, n := RewriteHTML(nil, src, HTMLOptions{Link: rec.link})
		if n != len(rec.urls) {
			t.Fatal("count")
		}
		if n == 0 && !bytes.Equal(out, src) {
			t.Fatal("changed without a link")
		}
	})
}
