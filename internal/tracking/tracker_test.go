package tracking

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"log/slog"
	"mime/quotedprintable"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/dkim"
	stagedkim "github.com/sluice-mta/sluice/internal/stages/dkim"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

const testBase = "https://t.acme.test"

func newTestTracker(t testing.TB, o Options) *Tracker {
	t.Helper()
	if o.Keys == nil {
		o.Keys = testRing(t, testKey(t, "k1"))
	}
	if o.Tenants == nil {
		o.Tenants = map[string]Policy{"acme": {BaseURL: testBase}}
	}
	tr, err := New(o, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func testMessage(t testing.TB, raw string, rcpts ...string) *pipeline.Message {
	t.Helper()
	txn := &pipeline.Txn{
		Conn:     &pipeline.Conn{Source: pipeline.SourceHTTP, Identity: &pipeline.Identity{Name: "k", Tenant: "acme"}},
		ID:       "01JD0000000000000000000000",
		Sender:   "app@acme.example",
		Received: time.Unix(1_790_000_000, 0),
	}
	if len(rcpts) == 0 {
		rcpts = []string{"bob@example.org"}
	}
	for _, r := range rcpts {
		rc, err := pipeline.NewRecipient(r)
		if err != nil {
			t.Fatal(err)
		}
		txn.Recipients = append(txn.Recipients, rc)
	}
	m, err := pipeline.ParseMessage(txn, []byte(strings.ReplaceAll(raw, "\n", "\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func yes() *bool { b := true; return &b }
func no() *bool  { b := false; return &b }

// alternative is a message as the HTTP API composes it: text and HTML
// in quoted-printable, an attachment in base64.
const alternative = `From: App <app@acme.example>
To: bob@example.org
Subject: Your Invoice
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="mixed"

--mixed
Content-Type: multipart/alternative; boundary="alt"

--alt
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Pay at https://pay.acme.example/i/1234 today.
--alt
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: quoted-printable

<html><body><h1>Invoice #1234</h1><p><a href=3D"https://pay.acme.example/i/1=
234?a=3D1&amp;b=3D2">Pay</a> <a href=3D"mailto:billing@acme.example">Ask</a=
></p></body></html>
--alt--
--mixed
Content-Type: text/html; name="copy.html"
Content-Disposition: attachment; filename="copy.html"
Content-Transfer-Encoding: base64

PGEgaHJlZj0iaHR0cHM6Ly9wYXkuYWNtZS5leGFtcGxlLyI+YXR0YWNoZWQ8L2E+
--mixed--
`

func htmlPart(t *testing.T, m *pipeline.Message) string {
	t.Helper()
	b := string(m.Body)
	i := strings.Index(b, "Content-Type: text/html; charset=utf-8")
	if i < 0 {
		t.Fatalf("no html part in\n%s", b)
	}
	b = b[i:]
	b = b[strings.Index(b, "\r\n\r\n")+4:]
	b = b[:strings.Index(b, "\r\n--alt--")]
	dec, err := io.ReadAll(quotedprintable.NewReader(strings.NewReader(b)))
	if err != nil {
		t.Fatal(err)
	}
	return string(dec)
}

var trackedURL = regexp.MustCompile(`https://t\.acme\.test/t/([ocu])/([A-Za-z0-9_-]+)`)

// TestRewriteMessage: opens and clicks on a composed message: the HTML
// part gets the pixel and its http link signed, mailto and the HTML
// attachment stay, the text part stays (text_links off), the tokens
// verify and carry the message, recipient, tenant and link.
func TestRewriteMessage(t *testing.T) {
	tr := newTestTracker(t, Options{})
	m := testMessage(t, alternative)
	m.Track = &pipeline.Track{Opens: yes(), Clicks: yes()}
	before := string(m.Body)
	if err := tr.Rewrite(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	html := htmlPart(t, m)
	found := trackedURL.FindAllStringSubmatch(html, -1)
	if len(found) != 2 || found[0][1] != "c" || found[1][1] != "o" {
		t.Fatalf("want one click link then the pixel, got %q in\n%s", found, html)
	}
	kr := tr.opts.Load().Keys
	l, err := kr.Verify(KindClick, found[0][2])
	if err != nil {
		t.Fatal(err)
	}
	want := Link{Kind: KindClick, Tenant: "acme", MessageID: m.ID, Recipient: "bob@example.org", Accepted: m.Received.UTC(), URL: "https://pay.acme.example/i/1234?a=1&b=2"}
	if *l != want {
		t.Fatalf("click link %+v\nwant %+v", *l, want)
	}
	if _, err := kr.Verify(KindOpen, found[1][2]); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(html, `href="mailto:billing@acme.example"`) {
		t.Fatalf("mailto link changed:\n%s", html)
	}
	for _, keep := range []string{"Pay at https://pay.acme.example/i/1234 today.", "PGEgaHJlZj0iaHR0cHM6Ly9wYXkuYWNtZS5leGFtcGxlLyI+YXR0YWNoZWQ8L2E+"} {
		if !strings.Contains(string(m.Body), keep) {
			t.Fatalf("%q changed:\n%s", keep, m.Body)
		}
	}
	// Everything outside the HTML part is byte for byte the same.
	i := strings.Index(before, "Content-Type: text/html; charset=utf-8")
	if !strings.HasPrefix(string(m.Body), before[:i]) {
		t.Fatal("bytes before the HTML part changed")
	}
	j := strings.Index(before, "\r\n--alt--")
	if !strings.HasSuffix(string(m.Body), before[j:]) {
		t.Fatal("bytes after the HTML part changed")
	}
	if m.Header.Has("List-Unsubscribe") {
		t.Fatal("List-Unsubscribe added without being asked")
	}
}

// TestRewriteOptOutWins: a tenant default of everything on, the message
// says false: nothing changes.
func TestRewriteOptOutWins(t *testing.T) {
	tr := newTestTracker(t, Options{Tenants: map[string]Policy{"acme": {BaseURL: testBase, Opens: true, Clicks: true, Unsubscribe: true}}})
	m := testMessage(t, alternative)
	m.Track = &pipeline.Track{Opens: no(), Clicks: no(), Unsubscribe: no()}
	before := string(m.Body)
	if err := tr.Rewrite(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	if string(m.Body) != before || m.Header.Has("List-Unsubscribe") {
		t.Fatal("an opted-out message was tracked")
	}
	// Without a Track, the defaults apply.
	m = testMessage(t, alternative)
	_ = tr.Rewrite(context.Background(), m)
	if string(m.Body) == before || !m.Header.Has("List-Unsubscribe") {
		t.Fatal("tenant defaults not applied")
	}
}

// TestRewriteUnsubscribeHeaders: RFC 8058 fields with a signed https
// link; not for several recipients or when the message has its own.
func TestRewriteUnsubscribeHeaders(t *testing.T) {
	tr := newTestTracker(t, Options{})
	m := testMessage(t, alternative)
	m.Track = &pipeline.Track{Unsubscribe: yes()}
	_ = tr.Rewrite(context.Background(), m)
	if got := m.Header.Get("List-Unsubscribe-Post"); got != "List-Unsubscribe=One-Click" {
		t.Fatalf("List-Unsubscribe-Post %q", got)
	}
	lu := m.Header.Get("List-Unsubscribe")
	sm := trackedURL.FindStringSubmatch(lu)
	if sm == nil || sm[1] != "u" || lu != "<"+sm[0]+">" {
		t.Fatalf("List-Unsubscribe %q", lu)
	}
	if l, err := tr.opts.Load().Keys.Verify(KindUnsubscribe, sm[2]); err != nil || l.Recipient != "bob@example.org" {
		t.Fatalf("unsubscribe token: %+v %v", l, err)
	}
	m = testMessage(t, alternative, "a@example.org", "b@example.org")
	m.Track = &pipeline.Track{Unsubscribe: yes()}
	_ = tr.Rewrite(context.Background(), m)
	if m.Header.Has("List-Unsubscribe") {
		t.Fatal("List-Unsubscribe for a message to two recipients")
	}
	m = testMessage(t, "List-Unsubscribe: <mailto:u@acme.example>\n"+alternative)
	m.Track = &pipeline.Track{Unsubscribe: yes()}
	_ = tr.Rewrite(context.Background(), m)
	if v := m.Header.Values("List-Unsubscribe"); len(v) != 1 || m.Header.Has("List-Unsubscribe-Post") {
		t.Fatalf("the sender's List-Unsubscribe was not kept alone: %q", v)
	}
}

// TestRewriteEncodings: a base64 HTML part stays base64; a 7bit part
// whose line grows past 998 octets becomes quoted-printable (and says
// so); a single-part HTML message; a bounce is never tracked.
func TestRewriteEncodings(t *testing.T) {
	tr := newTestTracker(t, Options{})
	html := `<html><body><a href="https://shop.example/x">x</a></body></html>`
	b64 := base64.StdEncoding.EncodeToString([]byte(html))
	m := testMessage(t, "From: a@acme.example\nContent-Type: text/html\nContent-Transfer-Encoding: base64\n\n"+b64+"\n")
	m.Track = &pipeline.Track{Clicks: yes()}
	_ = tr.Rewrite(context.Background(), m)
	dec, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(string(m.Body), "\r\n", ""))
	if err != nil || !trackedURL.Match(dec) || strings.Contains(string(dec), "shop.example") {
		t.Fatalf("base64 part: %v %q", err, dec)
	}
	for line := range strings.SplitSeq(string(m.Body), "\r\n") {
		if len(line) > 76 {
			t.Fatalf("base64 line of %d", len(line))
		}
	}
	long := `<html><body><p>` + strings.Repeat("word ", 190) + `<a href="https://shop.example/y">y</a></p></body></html>`
	m = testMessage(t, "From: a@acme.example\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: 7bit\n\n"+long+"\n")
	m.Track = &pipeline.Track{Clicks: yes()}
	_ = tr.Rewrite(context.Background(), m)
	if m.Header.Get("Content-Transfer-Encoding") != "quoted-printable" {
		t.Fatalf("CTE %q after a line grew past 998", m.Header.Get("Content-Transfer-Encoding"))
	}
	for line := range strings.SplitSeq(string(m.Body), "\r\n") {
		if len(line) > 998 {
			t.Fatal("a line over 998 octets")
		}
	}
	m = testMessage(t, "From: a@acme.example\nContent-Type: text/html\n\n"+html+"\n")
	m.Sender = ""
	m.Track = &pipeline.Track{Clicks: yes(), Opens: yes()}
	_ = tr.Rewrite(context.Background(), m)
	if strings.Contains(string(m.Body), "t.acme.test") {
		t.Fatal("a bounce (null sender) was tracked")
	}
}

// TestRewriteThenDKIM: the chain runs the tracker before dkim_sign, so
// the signature covers the rewritten body and the List-Unsubscribe
// fields; dkimpy (an independent verifier) passes it.
func TestRewriteThenDKIM(t *testing.T) {
	testutil.NeedDKIMPy(t)
	dir := t.TempDir()
	k, err := dkim.Generate(dkim.AlgoRSA)
	if err != nil {
		t.Fatal(err)
	}
	pem, _ := dkim.MarshalPrivateKey(k)
	if err := os.WriteFile(filepath.Join(dir, "k.pem"), pem, 0o600); err != nil {
		t.Fatal(err)
	}
	rec, _ := dkim.RecordValue(k)
	st, err := stagedkim.NewSigner("dkim", map[string]any{"domain": "acme.example", "selector": "s1", "key": "k.pem"})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.(pipeline.Provisioner).Provision(&pipeline.Env{Logger: slog.New(slog.DiscardHandler), Hostname: "mx.test", ConfigDir: dir}); err != nil {
		t.Fatal(err)
	}
	tr := newTestTracker(t, Options{})
	chain, err := pipeline.Compile([]pipeline.Stage{st}, pipeline.ChainOptions{Rewriter: tr})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"newsletter_tables", "malformed", "receipt"} {
		src, _ := os.ReadFile("testdata/corpus/" + f + ".html")
		var qp bytes.Buffer
		w := quotedprintable.NewWriter(&qp)
		w.Write(src)
		w.Close()
		raw := "From: App <app@acme.example>\nTo: bob@example.org\nSubject: corpus " + f + "\nMIME-Version: 1.0\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n" +
			strings.ReplaceAll(qp.String(), "\r\n", "\n") + "\n"
		m := testMessage(t, raw)
		m.Track = &pipeline.Track{Opens: yes(), Clicks: yes(), Unsubscribe: yes()}
		if discard, _, err := chain.Message(context.Background(), m); err != nil || discard {
			t.Fatal(discard, err)
		}
		out, _ := m.Bytes()
		if !trackedURL.Match(m.Body) || !bytes.Contains(out, []byte("List-Unsubscribe-Post")) || !bytes.HasPrefix(out, []byte("DKIM-Signature:")) {
			t.Fatalf("%s: not rewritten and signed:\n%s", f, out)
		}
		got := testutil.DKIMPyVerify(t, out, map[string]string{"s1._domainkey.acme.example": rec})
		if len(got) != 1 || !strings.HasPrefix(got[0], "pass d=acme.example") {
			t.Fatalf("%s: dkimpy says %q over\n%s", f, got, out)
		}
		if !strings.Contains(strings.Join(strings.Fields(string(out[:bytes.Index(out, []byte("\r\n\r\n"))])), ""), "List-Unsubscribe:List-Unsubscribe-Post") {
			t.Errorf("%s: the signature does not cover List-Unsubscribe and List-Unsubscribe-Post", f)
		}
	}
}
