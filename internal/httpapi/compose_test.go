package httpapi

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"io"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	message "github.com/emersion/go-message"
	gomail "github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"

	"github.com/sluice-mta/sluice/pipeline"
)

func TestAppendField(t *testing.T) {
	long := strings.TrimSpace(strings.Repeat("word ", 40))
	for _, c := range []struct{ k, v, want string }{
		{"Subject", "hi", "Subject: hi\r\n"},
		{"Subject", "", "Subject: \r\n"},
		{"X", "a  b", "X: a  b\r\n"},
		{"To", strings.Repeat("x", 100), "To:\r\n " + strings.Repeat("x", 100) + "\r\n"}, // a long first word gets its own line
		{"X", " lead", "X:  lead\r\n"},
	} {
		if got := string(appendField(nil, c.k, c.v)); got != c.want {
			t.Errorf("appendField(%q, %q) = %q, want %q", c.k, c.v, got, c.want)
		}
	}
	out := appendField(nil, "Subject", long)
	lines := strings.Split(strings.TrimSuffix(string(out), "\r\n"), "\r\n")
	if len(lines) < 3 {
		t.Fatalf("not folded: %q", out)
	}
	for i, l := range lines {
		if len(l) > 78 || strings.TrimSpace(l) == "" || strings.HasSuffix(l, " ") {
			t.Errorf("line %d %q", i, l)
		}
		if i > 0 && l[0] != ' ' || strings.HasSuffix(l, ":") {
			t.Errorf("continuation %q does not start with a space", l)
		}
	}
	// Unfolding restores the value.
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(append(out, '\r', '\n'))))
	if err != nil || h.Get("Subject") != strings.TrimSpace(long) {
		t.Fatalf("unfolded %q, %v", h.Get("Subject"), err)
	}
}

func composeOne(t testing.TB, m *messageRequest) []byte {
	t.Helper()
	v, e := validate("", m)
	if e != nil {
		t.Fatalf("validate: %v", e)
	}
	var buf bytes.Buffer
	h, off, err := compose(&buf, v, "01JD4Q7Z3M5XK2T0B9V8W6R1YA", "relay.test", time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	// The returned header serialises to exactly the bytes before the body.
	var hb bytes.Buffer
	textproto.WriteHeader(&hb, h.Header)
	if !bytes.Equal(hb.Bytes(), buf.Bytes()[:off]) {
		t.Fatalf("header mismatch:\n%q\n%q", hb.Bytes(), buf.Bytes()[:off])
	}
	return buf.Bytes()
}

func TestComposeHeaderAndLimits(t *testing.T) {
	var many []string
	for i := 0; i < 40; i++ {
		many = append(many, "Recipient Number "+itoa(i)+" <rcpt"+itoa(i)+"@dest.test>")
	}
	data := composeOne(t, &messageRequest{
		From: "Ünïcode Sender <a@example.com>", To: many, Subject: strings.Repeat("Grüße ✓ ", 60),
		Text: strings.Repeat("y", 3000) + "\n" + "trailing space \nend", Headers: map[string]string{"X-Long": strings.Repeat("v ", 400)},
	})
	for i, line := range bytes.Split(data, []byte("\r\n")) {
		if bytes.ContainsAny(line, "\r\n") || len(line) > 998 {
			t.Fatalf("line %d: %q", i, line)
		}
	}
	hdrEnd := bytes.Index(data, []byte("\r\n\r\n"))
	for _, line := range bytes.Split(data[:hdrEnd], []byte("\r\n")) {
		if len(line) > 78 {
			t.Errorf("header line longer than 78: %q", line)
		}
	}
	if !bytes.HasPrefix(data, []byte("From: ")) {
		t.Errorf("the header does not start with From: %q", data[:40])
	}
	mr, err := gomail.CreateReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := mr.Header.Subject(); s != strings.Repeat("Grüße ✓ ", 60) {
		t.Errorf("subject %q", s)
	}
	if to, err := mr.Header.AddressList("To"); err != nil || len(to) != 40 || to[39].Name != "Recipient Number 39" {
		t.Errorf("To: %d %v", len(to), err)
	}
	p, err := mr.NextPart()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(p.Body)
	if string(b) != strings.Repeat("y", 3000)+"\r\ntrailing space \r\nend" {
		t.Errorf("text round trip: %q", b)
	}
}

func TestComposeAttachmentOnly(t *testing.T) {
	data := composeOne(t, &messageRequest{From: "a@example.com", To: addrList{"b@dest.test"},
		Attachments: []attachment{{Filename: "a.csv", Content: base64.StdEncoding.EncodeToString([]byte("x,y\n1,2\n"))}}})
	ent, err := message.Read(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if got := structure(t, ent); got != "multipart/mixed(text/plain,text/csv)" {
		t.Fatalf("structure %s", got)
	}
}

func TestNormalizeRaw(t *testing.T) {
	for in, want := range map[string]string{
		"a\nb":          "a\r\nb\r\n",
		"a\r\nb\r\n":    "a\r\nb\r\n",
		"a\n\nb\n":      "a\r\n\r\nb\r\n",
		"":              "",
		"x\r\n.\n.\r\n": "x\r\n.\r\n.\r\n",
	} {
		got, e := normalizeRaw(nil, []byte(in))
		if e != nil || string(got) != want {
			t.Errorf("normalizeRaw(%q) = %q, %v; want %q", in, got, e, want)
		}
	}
	for _, in := range []string{"a\rb", "a\r", "\r\r\n", "a\x00b", strings.Repeat("x", 999)} {
		if _, e := normalizeRaw(nil, []byte(in)); e == nil {
			t.Errorf("normalizeRaw(%q) accepted", in)
		}
	}
}

func TestFromPipelineMapping(t *testing.T) {
	for _, c := range []struct {
		code   int
		enh    [3]int
		status int
		retry  bool
	}{
		{550, [3]int{5, 7, 1}, 422, false},
		{554, [3]int{5, 6, 0}, 422, false},
		{451, [3]int{4, 7, 1}, 429, true},
		{451, [3]int{4, 4, 5}, 429, true},
		{451, [3]int{4, 3, 0}, 503, true}, // relay commit failure
		{452, [3]int{4, 3, 1}, 507, true},
	} {
		e := fromPipeline(pipelineErr(c.code, c.enh))
		if e.Status != c.status || (e.retryAfter() != "") != c.retry || e.SMTPCode != c.code {
			t.Errorf("%d %v → %+v", c.code, c.enh, e)
		}
	}
	// Unknown errors never leak.
	e := fromPipeline(io.ErrUnexpectedEOF)
	if e.Status != 503 || strings.Contains(e.Message, "EOF") {
		t.Errorf("unknown error → %+v", e)
	}
}

// FuzzSubjectRoundTrip: any subject either is refused or reaches the
// message as one header field that decodes back to itself.
func FuzzSubjectRoundTrip(f *testing.F) {
	for _, s := range []string{"hi", "Grüße ✓", "=?utf-8?q?a=0D=0Ab?=", "a\r\nBcc: x", strings.Repeat("ab ", 100), "=?x?q?y?=", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, subject string) {
		v, e := validate("", &messageRequest{From: "a@example.com", To: addrList{"b@dest.test"}, Subject: subject})
		if e != nil {
			return
		}
		var buf bytes.Buffer
		if _, _, err := compose(&buf, v, "01JD4Q7Z3M5XK2T0B9V8W6R1YA", "relay.test", time.Now()); err != nil {
			t.Fatal(err)
		}
		data := buf.Bytes()
		for _, line := range bytes.Split(data, []byte("\r\n")) {
			if bytes.ContainsAny(line, "\r\n") || len(line) > 998 {
				t.Fatalf("bad line %q", line)
			}
		}
		ent, err := message.Read(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		if n := ent.Header.FieldsByKey("Subject").Len(); n != 1 {
			t.Fatalf("%d Subject fields", n)
		}
		if ent.Header.Has("Bcc") {
			t.Fatal("a Bcc field appeared")
		}
		// go-message's reader collapses white space around folds.
		collapse := func(s string) string { return strings.Join(strings.Fields(s), " ") }
		got, err := ent.Header.Text("Subject")
		if err == nil && utf8.ValidString(subject) && collapse(got) != collapse(subject) && !strings.Contains(subject, "=?") {
			t.Fatalf("subject %q came back as %q", subject, got)
		}
	})
}

// FuzzNormalizeRaw: the output never has a bare CR or LF.
func FuzzNormalizeRaw(f *testing.F) {
	for _, s := range []string{"a\nb", "a\r\nb", "a\rb", "\n.\n", "x\r\n.\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, e := normalizeRaw(nil, in)
		if e != nil {
			return
		}
		for i, c := range out {
			if c == '\r' && (i+1 >= len(out) || out[i+1] != '\n') || c == '\n' && (i == 0 || out[i-1] != '\r') {
				t.Fatalf("bare line ending at %d in %q", i, out)
			}
		}
	})
}

func pipelineErr(code int, enh [3]int) error {
	return &pipeline.Error{Code: code, Enhanced: pipeline.EnhancedCode(enh), Message: "m"}
}
