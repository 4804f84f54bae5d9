package delivery

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math/rand"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

func TestWriteData(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", ".\r\n"},
		{"plain", "a\r\nb\r\n", "a\r\nb\r\n.\r\n"},
		{"unterminated last line", "a\r\nb", "a\r\nb\r\n.\r\n"},
		{"leading dot", ".hidden\r\n", "..hidden\r\n.\r\n"},
		{"lone dot line", "a\r\n.\r\nb\r\n", "a\r\n..\r\nb\r\n.\r\n"},
		{"dot at very start", ".", "..\r\n.\r\n"},
		{"two dots", "..\r\n", "...\r\n.\r\n"},
		{"dot mid-line untouched", "a.b\r\n", "a.b\r\n.\r\n"},
		{"bare LF becomes CRLF", "a\nb\n", "a\r\nb\r\n.\r\n"},
		{"bare CR becomes CRLF", "a\rb\r", "a\r\nb\r\n.\r\n"},
		{"smuggling LF dot LF", "a\n.\nb\r\n", "a\r\n..\r\nb\r\n.\r\n"},
		{"smuggling CR dot CR", "a\r.\rb\r\n", "a\r\n..\r\nb\r\n.\r\n"},
		{"smuggling LF dot CRLF", "a\n.\r\nMAIL FROM:<x>\r\n", "a\r\n..\r\nMAIL FROM:<x>\r\n.\r\n"},
		{"CR CR LF", "a\r\r\nb", "a\r\n\r\nb\r\n.\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			w := bufio.NewWriter(&buf)
			if err := writeData(w, []byte(tt.in)); err != nil {
				t.Fatal(err)
			}
			w.Flush()
			if got := buf.String(); got != tt.want {
				t.Fatalf("writeData(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// FuzzWriteData checks the invariants of the DATA encoding for any input:
// every line ends in CRLF, no CR or LF appears alone, the only lone-dot
// line is the terminator, and undoing the dot-stuffing gives the input
// with its line endings normalised.
func FuzzWriteData(f *testing.F) {
	for _, s := range []string{"", ".", "a\r\n.\r\n", "\n.\n", "\r.\r", "..\r\n.", "x\r\r\n.\n\r"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var buf bytes.Buffer
		w := bufio.NewWriter(&buf)
		if err := writeData(w, in); err != nil {
			t.Fatal(err)
		}
		w.Flush()
		out := buf.String()
		if !strings.HasSuffix(out, ".\r\n") {
			t.Fatalf("no terminator: %q", out)
		}
		body := strings.TrimSuffix(out, ".\r\n")
		if body != "" && !strings.HasSuffix(body, "\r\n") {
			t.Fatalf("terminator not on its own line: %q", out)
		}
		lines := strings.Split(body, "\r\n")
		lines = lines[:len(lines)-1] // after the last CRLF
		var unstuffed []string
		for _, l := range lines {
			if strings.ContainsAny(l, "\r\n") {
				t.Fatalf("bare CR or LF in %q", out)
			}
			if l == "." {
				t.Fatalf("lone dot before the end in %q", out)
			}
			if strings.HasPrefix(l, ".") {
				if !strings.HasPrefix(l, "..") {
					t.Fatalf("unstuffed leading dot in line %q", l)
				}
				l = l[1:]
			}
			unstuffed = append(unstuffed, l)
		}
		norm := strings.ReplaceAll(string(in), "\r\n", "\n")
		norm = strings.ReplaceAll(norm, "\r", "\n")
		norm = strings.TrimSuffix(norm, "\n")
		want := []string{}
		if len(in) > 0 {
			want = strings.Split(norm, "\n")
		}
		if strings.Join(unstuffed, "\n") != strings.Join(want, "\n") || len(unstuffed) != len(want) {
			t.Fatalf("round trip of %q gave lines %q, want %q", in, unstuffed, want)
		}
	})
}

func TestReadReply(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		code  int
		lines []string
		str   string
		err   bool
	}{
		{name: "single", in: "250 ok\r\n", code: 250, lines: []string{"ok"}, str: "250 ok"},
		{name: "no text", in: "250\r\n", code: 250, lines: []string{""}, str: "250"},
		{name: "bare LF", in: "354 go\n", code: 354, lines: []string{"go"}, str: "354 go"},
		{name: "multi", in: "250-mx.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n", code: 250, lines: []string{"mx.test", "PIPELINING", "SIZE 10"}},
		{name: "enhanced repeated", in: "550-5.1.1 no such\r\n550 5.1.1 user\r\n", code: 550, lines: []string{"5.1.1 no such", "5.1.1 user"}, str: "550 5.1.1 no such user"},
		{name: "enhanced class mismatch ignored", in: "550 4.1.1 odd\r\n", code: 550, lines: []string{"4.1.1 odd"}, str: "550 4.1.1 odd"},
		{name: "garbage", in: "hello\r\n", err: true},
		{name: "bad separator", in: "250xok\r\n", err: true},
		{name: "short", in: "25\r\n", err: true},
		{name: "eof mid-line", in: "250 o", err: true},
		{name: "eof mid-reply", in: "250-a\r\n", err: true},
		{name: "too long", in: "250 " + strings.Repeat("x", 5000) + "\r\n", err: true},
		{name: "too many lines", in: strings.Repeat("250-x\r\n", 300) + "250 x\r\n", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := readReply(bufio.NewReaderSize(strings.NewReader(tt.in), 4096))
			if tt.err {
				if err == nil {
					t.Fatalf("readReply(%q) = %+v, want an error", tt.in, r)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.code != tt.code || strings.Join(r.lines, "|") != strings.Join(tt.lines, "|") {
				t.Fatalf("readReply = %d %q, want %d %q", r.code, r.lines, tt.code, tt.lines)
			}
			if tt.str != "" && r.String() != tt.str {
				t.Fatalf("String() = %q, want %q", r.String(), tt.str)
			}
		})
	}
}

func TestReplyError(t *testing.T) {
	remote := pipeline.Remote{Host: "mx.test", IP: "192.0.2.1"}
	tests := []struct {
		in   reply
		code int
		enh  string
		msg  string
	}{
		{reply{550, []string{"5.1.1 <bob@x.test>: no such user"}}, 550, "5.1.1", "<bob@x.test>: no such user"},
		{reply{450, []string{"mailbox busy"}}, 450, "4.0.0", "mailbox busy"},
		{reply{554, []string{""}}, 554, "5.0.0", "RCPT rejected"},
		{reply{250, []string{"2.0.0 ok"}}, 451, "4.5.0", "unexpected reply to RCPT: 250 2.0.0 ok"},
		{reply{550, []string{"5.7.1 a\x00b\tc\x7f  d"}}, 550, "5.7.1", "a b c d"},
		{reply{550, []string{strings.Repeat("x", 3000)}}, 550, "5.0.0", strings.Repeat("x", maxReplyText)},
	}
	for _, tt := range tests {
		e := replyError(tt.in, "RCPT", remote)
		if e.Code != tt.code || e.EnhancedOrDefault().String() != tt.enh || e.Message != tt.msg {
			t.Errorf("replyError(%v) = %d %s %q, want %d %s %q", tt.in, e.Code, e.EnhancedOrDefault(), e.Message, tt.code, tt.enh, tt.msg)
		}
		var re *ReplyError
		if !errors.As(e, &re) || re.Remote != remote || re.Command != "RCPT" || re.Code != tt.in.code {
			t.Errorf("cause = %+v", re)
		}
	}
}

func TestSanitizeUTF8Boundary(t *testing.T) {
	s := sanitize(strings.Repeat("é", 10), 5) // 2 bytes each
	if s != "éé" {
		t.Fatalf("sanitize cut inside a rune: %q", s)
	}
}

func TestParseLiteral(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1":          "192.0.2.1",
		"[192.0.2.1]":        "192.0.2.1",
		"[IPv6:2001:db8::1]": "2001:db8::1",
		"[ipv6:2001:db8::1]": "2001:db8::1",
		"2001:db8::1":        "2001:db8::1",
		"[::ffff:192.0.2.1]": "192.0.2.1",
	} {
		ip, ok := parseLiteral(in)
		if !ok || ip.String() != want {
			t.Errorf("parseLiteral(%q) = %v, %v; want %s", in, ip, ok, want)
		}
	}
	for _, in := range []string{"mx.example.test", "[mx.example.test]", "fe80::1%eth0", ""} {
		if ip, ok := parseLiteral(in); ok {
			t.Errorf("parseLiteral(%q) = %v, want not a literal", in, ip)
		}
	}
}

// writeDataByteWise is the byte-at-a-time writeData that the line-wise
// one replaced: the reference TestWriteDataMatchesByteWise compares with.
func writeDataByteWise(w *bufio.Writer, msg []byte) error {
	lineStart := true
	start := 0
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		switch {
		case c == '.' && lineStart:
			w.Write(msg[start:i])
			w.WriteByte('.')
			start = i
			lineStart = false
		case c == '\n':
			if i == 0 || msg[i-1] != '\r' {
				w.Write(msg[start:i])
				w.WriteString("\r\n")
				start = i + 1
			}
			lineStart = true
		case c == '\r':
			if i+1 < len(msg) && msg[i+1] == '\n' {
				lineStart = false
				continue
			}
			w.Write(msg[start:i])
			w.WriteString("\r\n")
			start = i + 1
			lineStart = true
		default:
			lineStart = false
		}
	}
	w.Write(msg[start:])
	if !lineStart {
		w.WriteString("\r\n")
	}
	_, err := w.WriteString(".\r\n")
	return err
}

// TestWriteDataMatchesByteWise: the line-wise writeData writes exactly
// what the byte-at-a-time version wrote, on random input made mostly of
// CR, LF and dots.
func TestWriteDataMatchesByteWise(t *testing.T) {
	alphabet := []byte("\r\n.x")
	for seed := int64(0); seed < 5000; seed++ {
		rnd := rand.New(rand.NewSource(seed))
		in := make([]byte, rnd.Intn(64))
		for i := range in {
			in[i] = alphabet[rnd.Intn(len(alphabet))]
		}
		var got, want bytes.Buffer
		wg, ww := bufio.NewWriter(&got), bufio.NewWriter(&want)
		writeData(wg, in)
		writeDataByteWise(ww, in)
		wg.Flush()
		ww.Flush()
		if !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Fatalf("writeData(%q) = %q, want %q", in, got.Bytes(), want.Bytes())
		}
	}
}

// BenchmarkWriteData: 50 KB of 78-octet CRLF lines, line-wise vs the
// byte-at-a-time reference.
func BenchmarkWriteData(b *testing.B) {
	msg := bytes.Repeat([]byte(strings.Repeat("y", 76)+"\r\n"), 50<<10/78)
	for _, tc := range []struct {
		name string
		f    func(*bufio.Writer, []byte) error
	}{{"lines", writeData}, {"bytewise", writeDataByteWise}} {
		b.Run(tc.name, func(b *testing.B) {
			w := bufio.NewWriterSize(io.Discard, 32<<10)
			b.SetBytes(int64(len(msg)))
			for i := 0; i < b.N; i++ {
				tc.f(w, msg)
			}
		})
	}
}
