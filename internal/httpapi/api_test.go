package httpapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	message "github.com/emersion/go-message"
	gomail "github.com/emersion/go-message/mail"

	"github.com/sluice-mta/sluice/internal/apikey"
	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

type accepted struct {
	ID         string       `json:"id"`
	Recipients []rcptAnswer `json:"recipients"`
}

func mustAccept(t *testing.T, r resp) accepted {
	t.Helper()
	if r.Status != http.StatusAccepted {
		t.Fatalf("status %d, want 202: %s", r.Status, r.Body)
	}
	var a accepted
	r.json(t, &a)
	if a.ID == "" {
		t.Fatalf("no id in %s", r.Body)
	}
	return a
}

// checkWire asserts the bytes are a well-formed message on the wire: CRLF
// only, no line over 998 octets.
func checkWire(t *testing.T, data []byte) {
	t.Helper()
	for i, line := range bytes.Split(data, []byte("\r\n")) {
		if bytes.ContainsAny(line, "\r\n") {
			t.Fatalf("line %d has a bare CR or LF: %q", i, line)
		}
		if len(line) > 998 {
			t.Fatalf("line %d is %d octets long", i, len(line))
		}
	}
}

// The whole path: JSON over real HTTP → stages → spool → queue → real
// SMTP delivery → a sink whose bytes go-message reads back.
func TestEndToEndComposedMessage(t *testing.T) {
	e := newEnv(t, envOptions{})
	pdf := bytes.Repeat([]byte{0, 1, 2, 0xff, 'P', 'D', 'F'}, 3000)
	png := []byte("\x89PNG\r\n\x1a\nnot really a png")
	req := map[string]any{
		"from":     "Alice Äpfel <alice@example.com>",
		"to":       []string{"Bob <bob@dest.test>", "carol@dest.test"},
		"cc":       "Dan Ü <dan@dest.test>",
		"bcc":      []string{"eve@dest.test", "bob@dest.test"}, // bob twice: one envelope recipient
		"reply_to": "support@example.com",
		"subject":  "Grüße ✓ — " + strings.Repeat("a long subject ", 10),
		"text":     "Hello Bob,\nthe report is attached ✓\n" + strings.Repeat("x", 200) + "\n",
		"html":     `<p>Hello <b>Bob</b></p><img src="cid:logo">`,
		"headers":  map[string]string{"X-Campaign": "spring-2026", "List-Unsubscribe": "<mailto:unsub@example.com>", "X-Note": "naïve"},
		"attachments": []map[string]string{
			{"filename": "report.pdf", "content_type": "application/pdf", "content": base64.StdEncoding.EncodeToString(pdf)},
			{"filename": "logo.png", "content": base64.StdEncoding.EncodeToString(png), "content_id": "logo"},
			{"filename": "Übersicht.txt", "content": base64.StdEncoding.EncodeToString([]byte("ümlaut file"))},
		},
		"tags":     []string{"invoice"},
		"metadata": map[string]string{"order": "1234"},
	}
	a := mustAccept(t, e.post("/v1/messages", req))
	if len(a.Recipients) != 4 {
		t.Fatalf("recipients %+v, want bob, carol, dan, eve", a.Recipients)
	}
	for _, r := range a.Recipients {
		if r.Status != "queued" {
			t.Fatalf("recipient %+v not queued", r)
		}
	}

	testutil.WaitFor(t, "delivery to the sink", func() bool { return len(e.sink.Messages()) == 1 })
	got := e.sink.Messages()[0]
	if got.From != "alice@example.com" || strings.Join(got.Rcpts, ",") != "bob@dest.test,carol@dest.test,dan@dest.test,eve@dest.test" {
		t.Fatalf("envelope %q → %q", got.From, got.Rcpts)
	}
	checkWire(t, got.Data)
	if bytes.Contains(got.Data, []byte("eve@")) {
		t.Fatal("the Bcc recipient appears in the message")
	}

	mr, err := gomail.CreateReader(bytes.NewReader(got.Data))
	if err != nil {
		t.Fatal(err)
	}
	h := mr.Header
	if s, err := h.Subject(); err != nil || s != req["subject"] {
		t.Errorf("Subject = %q, %v", s, err)
	}
	if from, _ := h.AddressList("From"); len(from) != 1 || from[0].Name != "Alice Äpfel" || from[0].Address != "alice@example.com" {
		t.Errorf("From = %+v", from)
	}
	if to, _ := h.AddressList("To"); len(to) != 2 || to[0].Name != "Bob" {
		t.Errorf("To = %+v", to)
	}
	if cc, _ := h.AddressList("Cc"); len(cc) != 1 || cc[0].Name != "Dan Ü" {
		t.Errorf("Cc = %+v", cc)
	}
	if rt, _ := h.AddressList("Reply-To"); len(rt) != 1 || rt[0].Address != "support@example.com" {
		t.Errorf("Reply-To = %+v", rt)
	}
	if id, _ := h.MessageID(); id != a.ID+"@relay.test" {
		t.Errorf("Message-ID = %q, want %s@relay.test", id, a.ID)
	}
	if d, err := h.Date(); err != nil || d.IsZero() {
		t.Errorf("Date: %v %v", d, err)
	}
	if h.Get("Mime-Version") != "1.0" || h.Get("X-Campaign") != "spring-2026" || h.Get("List-Unsubscribe") != "<mailto:unsub@example.com>" {
		t.Errorf("headers: %v", h.Map())
	}
	if v, _ := h.Text("X-Note"); v != "naïve" {
		t.Errorf("X-Note = %q", v)
	}
	if h.Has("Bcc") {
		t.Error("Bcc header present")
	}

	var text, html string
	files := map[string][]byte{}
	cids := map[string]string{}
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(p.Body)
		switch ph := p.Header.(type) {
		case *gomail.InlineHeader:
			ct, _, _ := ph.ContentType()
			switch {
			case ct == "text/plain":
				text = string(body)
			case ct == "text/html":
				html = string(body)
			default:
				cids[ph.Get("Content-Id")] = ct
				files["inline:"+ct] = body
			}
		case *gomail.AttachmentHeader:
			name, _ := ph.Filename()
			files[name] = body
		}
	}
	if text != strings.ReplaceAll(req["text"].(string), "\n", "\r\n") {
		t.Errorf("text = %q", text)
	}
	if html != req["html"] {
		t.Errorf("html = %q", html)
	}
	if !bytes.Equal(files["report.pdf"], pdf) {
		t.Errorf("report.pdf: %d bytes, want %d", len(files["report.pdf"]), len(pdf))
	}
	if string(files["Übersicht.txt"]) != "ümlaut file" {
		t.Errorf("Übersicht.txt = %q (files %v)", files["Übersicht.txt"], keys(files))
	}
	if cids["<logo>"] != "image/png" || !bytes.Equal(files["inline:image/png"], png) {
		t.Errorf("inline image: cids %v", cids)
	}
	// The structure: mixed(alternative(text, related(html, logo)), pdf, txt).
	ent, err := message.Read(bytes.NewReader(got.Data))
	if err != nil {
		t.Fatal(err)
	}
	if got := structure(t, ent); got != "multipart/mixed(multipart/alternative(text/plain,multipart/related(text/html,image/png)),application/pdf,text/plain)" {
		t.Errorf("MIME structure %s", got)
	}

	// Every stage saw the key's identity, as an SMTP AUTH identity.
	hooks := map[string]bool{}
	for _, s := range e.stage.hooks() {
		hooks[s.Hook] = true
		if s.Hook == "on_connect" {
			continue // before authentication, as in SMTP
		}
		if s.Identity == nil || s.Tenant != "acme" || s.Identity.Method != "apikey" || !s.Identity.HasScope("send") {
			t.Errorf("%s saw identity %+v", s.Hook, s.Identity)
		}
	}
	for _, hk := range []string{"on_connect", "on_auth", "on_mail", "on_rcpt", "on_message", "on_route"} {
		if !hooks[hk] {
			t.Errorf("%s did not run", hk)
		}
	}

	// Events carry tenant, tags and metadata; delivery is recorded.
	var st statusAnswer
	testutil.WaitFor(t, "delivered state", func() bool {
		r := e.do("GET", "/v1/messages/"+a.ID, e.sendKey, nil)
		if r.Status != 200 {
			t.Fatalf("GET status %d: %s", r.Status, r.Body)
		}
		st = statusAnswer{}
		r.json(t, &st)
		for _, rc := range st.Recipients {
			if rc.State != "delivered" {
				return false
			}
		}
		return len(st.Recipients) == 4
	})
	types := map[string]int{}
	for _, ev := range st.Events {
		types[ev.Type]++
		if ev.Tenant != "acme" || ev.Source != "http" || len(ev.Tags) != 1 || ev.Tags[0] != "invoice" || ev.Metadata["order"] != "1234" {
			t.Errorf("event %+v", ev)
		}
	}
	if types["received"] != 4 || types["delivered"] != 4 {
		t.Errorf("event types %v", types)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func structure(t *testing.T, e *message.Entity) string {
	t.Helper()
	ct, _, _ := e.Header.ContentType()
	mr := e.MultipartReader()
	if mr == nil {
		return ct
	}
	var kids []string
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		kids = append(kids, structure(t, p))
	}
	return ct + "(" + strings.Join(kids, ",") + ")"
}

// The benchmark's shapes (internal/loadgen) work.
func TestLoadgenShapes(t *testing.T) {
	e := newEnv(t, envOptions{noDelivery: true})
	one := `{"from":"bench@example.com","to":["sink@dest.test"],"subject":"bench 000001 run","text":"hello"}`
	mustAccept(t, e.post("/v1/messages", one))
	r := e.post("/v1/messages/batch", `{"messages":[`+one+`,`+one+`]}`)
	if r.Status != 202 {
		t.Fatalf("batch: %d %s", r.Status, r.Body)
	}
	if n := e.queued(); n != 3 {
		t.Fatalf("%d recipients queued, want 3", n)
	}
}

func TestTextOnlyAndHTMLOnly(t *testing.T) {
	e := newEnv(t, envOptions{})
	mustAccept(t, e.post("/v1/messages", map[string]any{"from": "a@example.com", "to": "b@dest.test", "subject": "plain", "text": "just text"}))
	mustAccept(t, e.post("/v1/messages", map[string]any{"from": "a@example.com", "to": "b@dest.test", "subject": "html", "html": "<p>x</p>"}))
	mustAccept(t, e.post("/v1/messages", map[string]any{"from": "a@example.com", "bcc": "b@dest.test", "subject": "only bcc"}))
	testutil.WaitFor(t, "3 deliveries", func() bool { return len(e.sink.Messages()) == 3 })
	want := map[string]string{"plain": "text/plain", "html": "text/html", "only bcc": "text/plain"}
	for _, m := range e.sink.Messages() {
		checkWire(t, m.Data)
		ent, err := message.Read(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatal(err)
		}
		subj := ent.Header.Get("Subject")
		ct, params, _ := ent.Header.ContentType()
		if ct != want[subj] || params["charset"] != "utf-8" || ent.Header.Get("Content-Transfer-Encoding") != "quoted-printable" {
			t.Errorf("%s: %s %v %s", subj, ct, params, ent.Header.Get("Content-Transfer-Encoding"))
		}
		if subj == "only bcc" && ent.Header.Get("To") != "undisclosed-recipients:;" {
			t.Errorf("To = %q", ent.Header.Get("To"))
		}
	}
}

// Header injection in any field is a 400 naming the field, and nothing is
// queued or delivered.
func TestHeaderInjectionRefused(t *testing.T) {
	e := newEnv(t, envOptions{})
	base := func() map[string]any {
		return map[string]any{"from": "a@example.com", "to": []string{"b@dest.test"}, "subject": "s", "text": "t"}
	}
	att := func(k, v string) []map[string]string {
		a := map[string]string{"filename": "a.txt", "content": "aGk="}
		a[k] = v
		return []map[string]string{a}
	}
	cases := []struct {
		name, field string
		set         func(m map[string]any)
	}{
		{"CRLF in subject", "subject", func(m map[string]any) { m["subject"] = "hi\r\nBcc: victim@x.test" }},
		{"LF in subject", "subject", func(m map[string]any) { m["subject"] = "hi\nBcc: victim@x.test" }},
		{"encoded CRLF in subject", "subject", func(m map[string]any) { m["subject"] = "=?utf-8?q?a=0D=0Ab?=" }},
		{"encoded base64 CRLF in subject", "subject", func(m map[string]any) { m["subject"] = "x =?UTF-8?B?YQ0KQmNjOiB2QHgudGVzdA==?=" }},
		{"CRLF in display name", "from", func(m map[string]any) { m["from"] = "Bob\r\nBcc: v@x.test <a@example.com>" }},
		{"encoded CRLF in display name", "from", func(m map[string]any) { m["from"] = "=?utf-8?q?Bob=0D=0ABcc:_v@x.test?= <a@example.com>" }},
		{"CRLF in address", "to[0]", func(m map[string]any) { m["to"] = []string{"b@dest.test\r\nDATA"} }},
		{"CR in cc", "cc[0]", func(m map[string]any) { m["cc"] = "c@dest.test\r" }},
		{"LF in bcc", "bcc[1]", func(m map[string]any) { m["bcc"] = []string{"ok@dest.test", "c@dest.test\nX: y"} }},
		{"LF in reply_to", "reply_to[0]", func(m map[string]any) { m["reply_to"] = "r@example.com\nX: y" }},
		{"CRLF in header name", "headers.X-A\r\nBcc", func(m map[string]any) { m["headers"] = map[string]string{"X-A\r\nBcc": "v"} }},
		{"colon in header name", "headers.X-A: b", func(m map[string]any) { m["headers"] = map[string]string{"X-A: b": "v"} }},
		{"CRLF in header value", "headers.X-A", func(m map[string]any) { m["headers"] = map[string]string{"X-A": "v\r\nBcc: victim@x.test"} }},
		{"encoded CRLF in header value", "headers.X-A", func(m map[string]any) { m["headers"] = map[string]string{"X-A": "=?utf-8?q?a=0D=0Ab?="} }},
		{"NUL in header value", "headers.X-A", func(m map[string]any) { m["headers"] = map[string]string{"X-A": "a\x00b"} }},
		{"reserved header", "headers.Bcc", func(m map[string]any) { m["headers"] = map[string]string{"Bcc": "victim@x.test"} }},
		{"CRLF in filename", "attachments[0].filename", func(m map[string]any) { m["attachments"] = att("filename", "a\r\nb.txt") }},
		{"CRLF in content_id", "attachments[0].content_id", func(m map[string]any) { m["attachments"] = att("content_id", "x\r\ny") }},
		{"CRLF in content_type", "attachments[0].content_type", func(m map[string]any) { m["attachments"] = att("content_type", "text/plain\r\nX: y") }},
		{"CRLF in tag", "tags[0]", func(m map[string]any) { m["tags"] = []string{"a\r\nb"} }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := base()
			c.set(m)
			r := e.post("/v1/messages", m)
			if r.Status != http.StatusBadRequest {
				t.Fatalf("status %d, want 400: %s", r.Status, r.Body)
			}
			if er := r.errorOf(t); er.Field != c.field {
				t.Fatalf("field %q, want %q (%s)", er.Field, c.field, er.Message)
			}
		})
	}
	// The same through the batch endpoint: per-item 400s.
	var msgs []map[string]any
	for _, c := range cases {
		m := base()
		c.set(m)
		msgs = append(msgs, m)
	}
	r := e.post("/v1/messages/batch", map[string]any{"messages": msgs})
	var ba batchAnswer
	r.json(t, &ba)
	if r.Status != 400 || ba.Accepted != 0 || ba.Failed != len(cases) {
		t.Fatalf("batch: %d %s", r.Status, r.Body)
	}
	for i, c := range cases {
		if f := ba.Results[i].Error.Field; f != idx("messages", i)+"."+c.field {
			t.Errorf("batch item %d: field %q", i, f)
		}
	}
	if n := e.queued(); n != 0 {
		t.Fatalf("%d recipients queued after refusals", n)
	}
	if n := len(e.sink.Messages()); n != 0 {
		t.Fatalf("%d messages delivered after refusals", n)
	}
}

func TestBadRequests(t *testing.T) {
	e := newEnv(t, envOptions{listener: configListener(4096)})
	cases := []struct {
		name   string
		body   string
		ctype  string
		status int
		code   string
		field  string
	}{
		{"missing from", `{"to":"b@dest.test"}`, "", 400, codeMissingField, "from"},
		{"no recipients", `{"from":"a@example.com"}`, "", 400, codeMissingField, "to"},
		{"bad address", `{"from":"a@example.com","to":["not-an-address"]}`, "", 400, codeInvalidField, "to[0]"},
		{"two froms", `{"from":"a@example.com, b@example.com","to":"b@dest.test"}`, "", 400, codeInvalidField, "from"},
		{"unknown field", `{"from":"a@example.com","to":"b@dest.test","subjet":"typo"}`, "", 400, codeUnknownField, "subjet"},
		{"unknown attachment field", `{"from":"a@example.com","to":"b@dest.test","attachments":[{"filename":"a","content":"","size":1}]}`, "", 400, codeUnknownField, "size"},
		{"wrong type", `{"from":"a@example.com","to":5}`, "", 400, codeInvalidField, "to"},
		{"wrong type nested", `{"from":"a@example.com","to":"b@dest.test","metadata":{"a":1}}`, "", 400, codeInvalidField, "metadata"},
		{"bad base64", `{"from":"a@example.com","to":"b@dest.test","attachments":[{"filename":"a.bin","content":"!!!"}]}`, "", 400, codeInvalidField, "attachments[0].content"},
		{"unknown encoding", `{"from":"a@example.com","to":"b@dest.test","attachments":[{"filename":"a.bin","content":"aGk=","encoding":"uuencode"}]}`, "", 400, codeInvalidField, "attachments[0].encoding"},
		{"multipart attachment", `{"from":"a@example.com","to":"b@dest.test","attachments":[{"filename":"a","content":"aGk=","content_type":"multipart/mixed"}]}`, "", 400, codeInvalidField, "attachments[0].content_type"},
		{"not json", `from=a`, "", 400, codeInvalidJSON, ""},
		{"trailing data", `{"from":"a@example.com","to":"b@dest.test"} {}`, "", 400, codeInvalidJSON, ""},
		{"array body", `[1]`, "", 400, codeInvalidJSON, ""},
		{"empty", ``, "", 400, codeInvalidJSON, ""},
		{"not application/json", `{}`, "text/plain", 415, codeUnsupportedType, ""},
		{"too large", `{"from":"a@example.com","to":"b@dest.test","text":"` + strings.Repeat("x", 5000) + `"}`, "", 413, codeTooLarge, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ct := "application/json"
			if c.ctype != "" {
				ct = c.ctype
			}
			req, _ := http.NewRequest("POST", e.url+"/v1/messages", strings.NewReader(c.body))
			req.Header.Set("Content-Type", ct)
			req.Header.Set("Authorization", "Bearer "+e.sendKey)
			res, err := e.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			r := resp{Status: res.StatusCode, Body: body}
			if r.Status != c.status {
				t.Fatalf("status %d, want %d: %s", r.Status, c.status, body)
			}
			er := r.errorOf(t)
			if er.Code != c.code || er.Field != c.field {
				t.Fatalf("error %+v, want code %s field %q", er, c.code, c.field)
			}
		})
	}
	// A chunked body over the limit (no Content-Length) is 413 too.
	pr, pw := io.Pipe()
	go func() {
		pw.Write([]byte(`{"from":"a@example.com","to":"b@dest.test","text":"`))
		pw.Write(bytes.Repeat([]byte("x"), 8000))
		pw.Write([]byte(`"}`))
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", e.url+"/v1/messages", pr)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+e.sendKey)
	res, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 413 {
		t.Fatalf("chunked: status %d", res.StatusCode)
	}

	for _, c := range []struct{ method, path string }{{"GET", "/v1/messages"}, {"DELETE", "/v1/messages/batch"}, {"POST", "/healthz"}} {
		if r := e.do(c.method, c.path, e.sendKey, nil); r.Status != 405 || r.Header.Get("Allow") == "" {
			t.Errorf("%s %s: %d", c.method, c.path, r.Status)
		}
	}
	if r := e.do("GET", "/v2/nothing", e.sendKey, nil); r.Status != 404 || r.errorOf(t).Code != codeNotFound {
		t.Errorf("unknown path: %d %s", r.Status, r.Body)
	}
	if n := e.queued(); n != 0 {
		t.Fatalf("%d recipients queued", n)
	}
}

func TestAuth(t *testing.T) {
	e := newEnv(t, envOptions{})
	msg := map[string]any{"from": "a@example.com", "to": "b@dest.test", "text": "x"}
	for name, key := range map[string]string{"missing": "", "wrong": "sk_0123456789abcdef_" + strings.Repeat("A", 43), "garbage": "hello"} {
		r := e.do("POST", "/v1/messages", key, msg)
		if r.Status != 401 || r.Header.Get("WWW-Authenticate") == "" || r.errorOf(t).Code != codeUnauthorized {
			t.Errorf("%s key: %d %s", name, r.Status, r.Body)
		}
	}
	// Basic auth is not a bearer key.
	req, _ := http.NewRequest("GET", e.url+"/v1/admin/keys", nil)
	req.SetBasicAuth("a", "b")
	if res, _ := e.client.Do(req); res.StatusCode != 401 {
		t.Errorf("basic auth: %d", res.StatusCode)
	}

	// Scopes: a send key cannot use the admin endpoint; an admin-only key
	// cannot send.
	if r := e.do("GET", "/v1/admin/keys", e.sendKey, nil); r.Status != 403 || r.errorOf(t).Code != codeForbidden {
		t.Errorf("send key on admin endpoint: %d %s", r.Status, r.Body)
	}
	if r := e.do("POST", "/v1/messages", e.adminKey, msg); r.Status != 403 {
		t.Errorf("admin key sending: %d %s", r.Status, r.Body)
	}
	r := e.do("GET", "/v1/admin/keys", e.adminKey, nil)
	if r.Status != 200 || bytes.Contains(r.Body, []byte("hash")) {
		t.Fatalf("admin keys: %d %s", r.Status, r.Body)
	}
	var kl struct{ Keys []keyInfo }
	r.json(t, &kl)
	if len(kl.Keys) != 2 { // acme's two keys, not other's
		t.Fatalf("keys %+v", kl.Keys)
	}

	// Revocation by another process (the CLI) takes effect without a restart.
	tok := e.createKey(apikey.CreateOptions{Tenant: "acme"})
	mustAccept(t, e.do("POST", "/v1/messages", tok, msg))
	cli, err := apikey.Open(e.keysPath)
	if err != nil {
		t.Fatal(err)
	}
	id := tok[len(apikey.Prefix) : len(apikey.Prefix)+16]
	if err := cli.Revoke(id); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "revoked key refused", func() bool { return e.do("POST", "/v1/messages", tok, msg).Status == 401 })

	// A key limited to sender domains.
	lim := e.createKey(apikey.CreateOptions{Tenant: "acme", Senders: []string{"example.com"}})
	mustAccept(t, e.do("POST", "/v1/messages", lim, msg))
	r = e.do("POST", "/v1/messages", lim, map[string]any{"from": "a@evil.test", "to": "b@dest.test"})
	if r.Status != 403 || r.errorOf(t).Code != codeSenderNotAllowed || r.errorOf(t).Field != "from" {
		t.Fatalf("foreign sender: %d %s", r.Status, r.Body)
	}
	r = e.do("POST", "/v1/messages/raw", lim, map[string]any{"from": "a@example.com", "to": []string{"b@dest.test"},
		"message": "From: ceo@evil.test\nSubject: x\n\nbody\n"})
	if r.Status != 403 || r.errorOf(t).Code != codeSenderNotAllowed || r.errorOf(t).Field != "message" {
		t.Fatalf("raw with foreign header From: %d %s", r.Status, r.Body)
	}
	// Issue 17: exactly one From field with one mailbox.
	for _, m := range []string{
		"From: a@example.com\nFrom: ceo@evil.test\nSubject: x\n\nbody\n",
		"From: a@example.com, ceo@evil.test\nSubject: x\n\nbody\n",
	} {
		r = e.do("POST", "/v1/messages/raw", lim, map[string]any{"from": "a@example.com", "to": []string{"b@dest.test"}, "message": m})
		if r.Status != 403 || r.errorOf(t).Code != codeSenderNotAllowed || r.errorOf(t).Field != "message" {
			t.Fatalf("raw %q: %d %s", m, r.Status, r.Body)
		}
	}
}

// on_auth may refuse a key or replace its identity.
func TestAuthStage(t *testing.T) {
	e := newEnv(t, envOptions{stageConfig: func(s *testStage) {
		s.auth = func(c *pipeline.Conn, cr *pipeline.Credentials) (pipeline.Verdict, *pipeline.Identity) {
			if cr.Mechanism != "APIKEY" || cr.Password != "" || cr.Token != "" {
				panic("credentials carry a secret")
			}
			if c.Identity.Tenant == "other" {
				return pipeline.RejectVerdict(550, pipeline.EnhancedCode{5, 7, 1}, "tenant suspended"), nil
			}
			id := *c.Identity
			id.Tenant = "acme-eu"
			return pipeline.AcceptVerdict(), &id
		}
	}})
	msg := map[string]any{"from": "a@example.com", "to": "b@dest.test", "text": "x"}
	r := e.do("POST", "/v1/messages", e.otherKey, msg)
	if r.Status != 403 || r.errorOf(t).SMTPCode != 550 || r.errorOf(t).Message != "tenant suspended" {
		t.Fatalf("refused by on_auth: %d %s", r.Status, r.Body)
	}
	a := mustAccept(t, e.post("/v1/messages", msg))
	h, _ := e.sp.History(a.ID)
	for i := range h {
		testutil.ValidateEventValue(t, &h[i])
	}
	if len(h) == 0 || h[0].Tenant != "acme-eu" {
		t.Fatalf("events %+v, want tenant acme-eu from on_auth", h)
	}
}

func TestStageVerdicts(t *testing.T) {
	e := newEnv(t, envOptions{stageConfig: func(s *testStage) {
		s.mail = func(txn *pipeline.Txn) pipeline.Verdict {
			switch txn.Sender {
			case "slow@example.com":
				return pipeline.TempfailVerdict(451, pipeline.EnhancedCode{4, 7, 1}, "rate limited")
			case "banned@example.com":
				return pipeline.RejectVerdict(550, pipeline.EnhancedCode{5, 7, 1}, "sender banned")
			}
			return pipeline.Verdict{}
		}
		s.rcpt = func(txn *pipeline.Txn, r *pipeline.Recipient) pipeline.Verdict {
			if r.Local == "nobody" {
				return pipeline.RejectVerdict(550, pipeline.EnhancedCode{5, 1, 1}, "no such user")
			}
			return pipeline.Verdict{}
		}
		s.message = func(m *pipeline.Message) pipeline.Verdict {
			switch m.Header.Get("Subject") {
			case "spam":
				return pipeline.RejectVerdict(554, pipeline.EnhancedCode{5, 7, 1}, "looks like spam")
			case "drop":
				return pipeline.DiscardVerdict("silently dropped")
			case "full":
				return pipeline.TempfailVerdict(452, pipeline.EnhancedCode{4, 3, 1}, "storage full")
			}
			return pipeline.Verdict{}
		}
		s.route = func(m *pipeline.Message, r *pipeline.Recipient) pipeline.Verdict {
			if r.Local == "unroutable" {
				return pipeline.RejectVerdict(550, pipeline.EnhancedCode{5, 4, 4}, "no route")
			}
			return pipeline.Verdict{}
		}
	}})
	msg := func(from, subject string, to ...string) map[string]any {
		return map[string]any{"from": from, "to": to, "subject": subject, "text": "x"}
	}

	// One recipient refused at on_rcpt and one at on_route: reported per
	// recipient, the others queued.
	a := mustAccept(t, e.post("/v1/messages", msg("a@example.com", "hi", "ok@dest.test", "nobody@dest.test", "unroutable@dest.test")))
	want := map[string]string{"ok@dest.test": "queued", "nobody@dest.test": "rejected", "unroutable@dest.test": "rejected"}
	for _, r := range a.Recipients {
		if want[r.Email] != r.Status || r.Status == "rejected" && (r.Code != 550 || r.Enhanced == "") {
			t.Errorf("recipient %+v", r)
		}
	}
	testutil.WaitFor(t, "delivery", func() bool { return len(e.sink.Messages()) == 1 })
	if got := e.sink.Messages()[0].Rcpts; len(got) != 1 || got[0] != "ok@dest.test" {
		t.Fatalf("delivered to %v", got)
	}
	var st statusAnswer
	e.do("GET", "/v1/messages/"+a.ID, e.sendKey, nil).json(t, &st)
	states := map[string]string{}
	for _, r := range st.Recipients {
		states[r.Email] = r.State
	}
	if states["nobody@dest.test"] != "rejected" || states["unroutable@dest.test"] != "rejected" {
		t.Errorf("states %v", states)
	}

	cases := []struct {
		name      string
		body      map[string]any
		status    int
		smtp      int
		enh       string
		retry     bool
		nRcptsErr int
	}{
		{"all recipients refused", msg("a@example.com", "hi", "nobody@dest.test", "nobody@other.test"), 422, 550, "5.1.1", false, 2},
		{"all refused at on_route", msg("a@example.com", "hi", "unroutable@dest.test"), 422, 550, "5.4.4", false, 1},
		{"sender refused", msg("banned@example.com", "hi", "ok@dest.test"), 422, 550, "5.7.1", false, 0},
		{"sender tempfailed", msg("slow@example.com", "hi", "ok@dest.test"), 429, 451, "4.7.1", true, 0},
		{"content refused", msg("a@example.com", "spam", "ok@dest.test"), 422, 554, "5.7.1", false, 0},
		{"storage tempfail", msg("a@example.com", "full", "ok@dest.test"), 507, 452, "4.3.1", true, 0},
	}
	before := e.queued()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.post("/v1/messages", c.body)
			if r.Status != c.status {
				t.Fatalf("status %d, want %d: %s", r.Status, c.status, r.Body)
			}
			er := r.errorOf(t)
			if er.SMTPCode != c.smtp || er.Enhanced != c.enh {
				t.Fatalf("error %+v", er)
			}
			if (r.Header.Get("Retry-After") != "") != c.retry {
				t.Fatalf("Retry-After %q", r.Header.Get("Retry-After"))
			}
			var body errorBody
			r.json(t, &body)
			if len(body.Recipients) != c.nRcptsErr {
				t.Fatalf("recipients in error: %+v", body.Recipients)
			}
		})
	}
	if n := e.queued(); n != before {
		t.Fatalf("queued went from %d to %d after refusals", before, n)
	}

	// Discard: accepted, nothing delivered, state discarded.
	a = mustAccept(t, e.post("/v1/messages", msg("a@example.com", "drop", "ok@dest.test")))
	if a.Recipients[0].Status != "discarded" {
		t.Fatalf("discard answer %+v", a)
	}
	e.do("GET", "/v1/messages/"+a.ID, e.sendKey, nil).json(t, &st)
	if len(st.Recipients) != 1 || st.Recipients[0].State != "discarded" {
		t.Fatalf("discard status %+v", st)
	}
}

func TestRawMessage(t *testing.T) {
	e := newEnv(t, envOptions{})
	raw := "From: App <app@example.com>\nTo: b@dest.test\nBcc: hidden@dest.test\nSubject: raw one\n\nline one\n.\nline three\n"
	a := mustAccept(t, e.post("/v1/messages/raw", map[string]any{"from": "app@example.com", "to": []string{"b@dest.test", "hidden@dest.test"},
		"message": raw, "tags": []string{"raw"}}))
	b64 := base64.StdEncoding.EncodeToString([]byte("From: app@example.com\r\nMessage-ID: <mine@example.com>\r\nDate: Mon, 02 Jan 2006 15:04:05 -0700\r\nSubject: b64\r\n\r\nbody\r\n"))
	mustAccept(t, e.post("/v1/messages/raw", map[string]any{"from": "app@example.com", "to": "b@dest.test", "message_base64": b64}))

	testutil.WaitFor(t, "2 deliveries", func() bool { return len(e.sink.Messages()) == 2 })
	for _, m := range e.sink.Messages() {
		checkWire(t, m.Data)
		hdr, body := splitMsg(t, m.Data)
		switch hdr.Get("Subject") {
		case "raw one":
			if body != "line one\r\n.\r\nline three\r\n" {
				t.Errorf("body %q", body)
			}
			if hdr.Get("Bcc") != "" {
				t.Error("Bcc not removed")
			}
			if hdr.Get("Message-Id") != "<"+a.ID+"@relay.test>" || hdr.Get("Date") == "" {
				t.Errorf("Message-ID %q Date %q not added", hdr.Get("Message-Id"), hdr.Get("Date"))
			}
			if len(m.Rcpts) != 2 {
				t.Errorf("rcpts %v", m.Rcpts)
			}
		case "b64":
			if hdr.Get("Message-Id") != "<mine@example.com>" || hdr.Get("Date") != "Mon, 02 Jan 2006 15:04:05 -0700" {
				t.Errorf("client Message-ID/Date replaced: %v", hdr)
			}
		default:
			t.Errorf("unexpected message %q", m.Data)
		}
	}

	for _, c := range []struct {
		name, field string
		body        map[string]any
	}{
		{"bare CR", "message", map[string]any{"from": "a@example.com", "to": "b@dest.test", "message": "From: a@example.com\r\n\r\nsmuggle\r.\rMAIL FROM:<x@y>\r\n"}},
		{"bare CR base64", "message_base64", map[string]any{"from": "a@example.com", "to": "b@dest.test", "message_base64": base64.StdEncoding.EncodeToString([]byte("From: a@example.com\r\n\r\nx\ry\r\n"))}},
		{"no header", "message", map[string]any{"from": "a@example.com", "to": "b@dest.test", "message": "just a body, no header\n"}},
		{"no From", "message", map[string]any{"from": "a@example.com", "to": "b@dest.test", "message": "Subject: x\n\nbody\n"}},
		{"NUL", "message", map[string]any{"from": "a@example.com", "to": "b@dest.test", "message": "From: a@example.com\n\na\x00b\n"}},
		{"long line", "message", map[string]any{"from": "a@example.com", "to": "b@dest.test", "message": "From: a@example.com\n\n" + strings.Repeat("x", 999) + "\n"}},
		{"both forms", "message", map[string]any{"from": "a@example.com", "to": "b@dest.test", "message": "From: a@example.com\n\nx", "message_base64": "eA=="}},
		{"neither form", "message", map[string]any{"from": "a@example.com", "to": "b@dest.test"}},
		{"bad base64", "message_base64", map[string]any{"from": "a@example.com", "to": "b@dest.test", "message_base64": "%%%"}},
		{"CRLF in envelope", "to[0]", map[string]any{"from": "a@example.com", "to": "b@dest.test\r\nRCPT TO:<x@y>", "message": "From: a@example.com\n\nx"}},
		{"no recipients", "to", map[string]any{"from": "a@example.com", "message": "From: a@example.com\n\nx"}},
		{"mail loop", "message", map[string]any{"from": "a@example.com", "to": "b@dest.test", "message": strings.Repeat("Received: from x by y; Mon, 02 Jan 2006 15:04:05 -0700\n", pipeline.DefaultMaxHops) + "From: a@example.com\n\nx"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := e.post("/v1/messages/raw", c.body)
			if r.Status != 400 || r.errorOf(t).Field != c.field {
				t.Fatalf("%d %s", r.Status, r.Body)
			}
		})
	}
	if n := e.queued(); n != 0 {
		t.Fatalf("%d recipients still queued", n)
	}
}

func splitMsg(t *testing.T, data []byte) (message.Header, string) {
	t.Helper()
	ent, err := message.Read(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(data, []byte("\r\n\r\n"))
	return ent.Header, string(data[i+4:])
}

func TestBatch(t *testing.T) {
	e := newEnv(t, envOptions{stageConfig: func(s *testStage) {
		s.message = func(m *pipeline.Message) pipeline.Verdict {
			if m.Header.Get("Subject") == "spam" {
				return pipeline.RejectVerdict(554, pipeline.EnhancedCode{5, 7, 1}, "spam")
			}
			return pipeline.Verdict{}
		}
	}})
	msgs := []map[string]any{
		{"from": "a@example.com", "to": "b1@dest.test", "subject": "one", "text": "1"},
		{"from": "bad", "to": "b2@dest.test", "subject": "two"},
		{"from": "a@example.com", "to": "b3@dest.test", "subject": "spam"},
		{"from": "a@example.com", "to": []string{"b4@dest.test", "b5@dest.test"}, "subject": "four", "metadata": map[string]string{"n": "4"}},
	}
	r := e.post("/v1/messages/batch", map[string]any{"messages": msgs})
	if r.Status != 202 {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	var ba batchAnswer
	r.json(t, &ba)
	if ba.Accepted != 2 || ba.Failed != 2 || len(ba.Results) != 4 {
		t.Fatalf("answer %s", r.Body)
	}
	if ba.Results[0].Status != 202 || ba.Results[0].ID == "" || ba.Results[3].Status != 202 || len(ba.Results[3].Recipients) != 2 {
		t.Errorf("accepted items: %s", r.Body)
	}
	if ba.Results[1].Status != 400 || ba.Results[1].Error.Field != "messages[1].from" {
		t.Errorf("invalid item: %+v", ba.Results[1])
	}
	if ba.Results[2].Status != 422 || ba.Results[2].Error.SMTPCode != 554 {
		t.Errorf("refused item: %+v", ba.Results[2])
	}
	testutil.WaitFor(t, "2 deliveries", func() bool { return len(e.sink.Messages()) == 2 })
	h, _ := e.sp.History(ba.Results[3].ID)
	for i := range h {
		testutil.ValidateEventValue(t, &h[i])
	}
	if len(h) == 0 || h[0].Metadata["n"] != "4" {
		t.Errorf("history %+v", h)
	}

	// Limits.
	many := make([]map[string]any, maxBatch+1)
	for i := range many {
		many[i] = msgs[0]
	}
	if r := e.post("/v1/messages/batch", map[string]any{"messages": many}); r.Status != 400 || r.errorOf(t).Field != "messages" {
		t.Fatalf("oversized batch: %d", r.Status)
	}
	if r := e.post("/v1/messages/batch", `{"messages":[]}`); r.Status != 400 {
		t.Fatalf("empty batch: %d", r.Status)
	}
	// Nothing accepted: the first failure's status.
	r = e.post("/v1/messages/batch", map[string]any{"messages": msgs[2:3]})
	if r.Status != 422 || r.errorOf(t).SMTPCode != 554 {
		t.Fatalf("all refused: %d %s", r.Status, r.Body)
	}
}

func TestIdempotency(t *testing.T) {
	e := newEnv(t, envOptions{stageConfig: func(s *testStage) {
		s.message = func(m *pipeline.Message) pipeline.Verdict {
			if m.Header.Get("Subject") == "concurrent" {
				time.Sleep(50 * time.Millisecond) // make the duplicates overlap
			}
			return pipeline.Verdict{}
		}
	}})
	body := `{"from":"a@example.com","to":"b@dest.test","subject":"once","text":"x"}`
	r1 := e.post("/v1/messages", body, "Idempotency-Key", "order-1")
	a1 := mustAccept(t, r1)
	r2 := e.post("/v1/messages", body, "Idempotency-Key", "order-1")
	a2 := mustAccept(t, r2)
	if a1.ID != a2.ID || !bytes.Equal(r1.Body, r2.Body) || r2.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replay differs:\n%s\n%s", r1.Body, r2.Body)
	}
	// Another tenant may use the same key for its own request.
	a3 := mustAccept(t, e.do("POST", "/v1/messages", e.otherKey, body, "Idempotency-Key", "order-1"))
	if a3.ID == a1.ID {
		t.Fatal("idempotency keys leak across tenants")
	}
	// Same key, different body.
	r := e.post("/v1/messages", strings.Replace(body, "once", "twice", 1), "Idempotency-Key", "order-1")
	if r.Status != 422 || r.errorOf(t).Code != codeIdempotencyReused {
		t.Fatalf("reused key: %d %s", r.Status, r.Body)
	}
	// The same key on another endpoint is another request.
	r = e.post("/v1/messages/batch", `{"messages":[`+body+`]}`, "Idempotency-Key", "order-1")
	if r.Status != 422 {
		t.Fatalf("key reused across endpoints: %d", r.Status)
	}
	if r := e.post("/v1/messages", body, "Idempotency-Key", "bad key"); r.Status != 400 {
		t.Fatalf("bad key: %d", r.Status)
	}

	// Concurrent duplicates: one delivery.
	var wg sync.WaitGroup
	ids := make([]string, 10)
	cbody := strings.Replace(body, "once", "concurrent", 1)
	start := make(chan struct{})
	for i := range ids {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			r := e.post("/v1/messages", cbody, "Idempotency-Key", "order-2")
			if r.Status != 202 {
				t.Errorf("concurrent %d: %d %s", i, r.Status, r.Body)
				return
			}
			var a accepted
			json.Unmarshal(r.Body, &a)
			ids[i] = a.ID
		}(i)
	}
	close(start)
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("ids differ: %v", ids)
		}
	}
	testutil.WaitFor(t, "3 deliveries", func() bool { return len(e.sink.Messages()) == 3 })
	// Give a wrongly queued duplicate the time to show up.
	testutil.WaitFor(t, "queue drained", func() bool { return e.queued() == 0 })
	subjects := map[string]int{}
	for _, m := range e.sink.Messages() {
		hdr, _ := splitMsg(t, m.Data)
		subjects[hdr.Get("Subject")]++
	}
	if subjects["once"] != 2 || subjects["concurrent"] != 1 { // acme's and other's "once"
		t.Fatalf("deliveries by subject %v", subjects)
	}
}

func TestBatchIdempotency(t *testing.T) {
	e := newEnv(t, envOptions{noDelivery: true, stageConfig: func(s *testStage) {
		s.message = func(m *pipeline.Message) pipeline.Verdict {
			switch m.Header.Get("Subject") {
			case "spam":
				return pipeline.RejectVerdict(554, pipeline.EnhancedCode{5, 7, 1}, "spam")
			case "drop":
				return pipeline.DiscardVerdict("drop")
			}
			return pipeline.Verdict{}
		}
	}})
	body := `{"messages":[
		{"from":"a@example.com","to":"b@dest.test","subject":"one"},
		{"from":"a@example.com","to":"b@dest.test","subject":"spam"},
		{"from":"a@example.com","to":["b@dest.test","c@dest.test"],"subject":"three"},
		{"from":"a@example.com","to":"b@dest.test","subject":"drop"},
		{"from":"a@example.com","to":"b@dest.test","subject":"spam"}]}`
	r1 := e.post("/v1/messages/batch", body, "Idempotency-Key", "batch-1")
	if r1.Status != 202 {
		t.Fatalf("%d %s", r1.Status, r1.Body)
	}
	queued := e.queued()
	r2 := e.post("/v1/messages/batch", body, "Idempotency-Key", "batch-1")
	if r2.Status != 202 || !bytes.Equal(r1.Body, r2.Body) {
		t.Fatalf("replay:\n%s\n%s", r1.Body, r2.Body)
	}
	if e.queued() != queued {
		t.Fatal("the replay queued again")
	}

	// A crash right after the batch commit leaves the partial answer
	// stored with the first message: a replay completes it from the
	// event history and says the same as the first answer.
	var final batchAnswer
	json.Unmarshal(r1.Body, &final)
	items := make([]*item, len(final.Results))
	var pending []int
	for i, res := range final.Results {
		// Every message reached the relay: none was decided at the first commit.
		items[i] = &item{id: res.ID}
		pending = append(pending, i)
	}
	_, partial, _ := renderBatch(items, true)
	raw, ok, err := e.sp.GetIdempotency("acme/batch-1", e.srv.now())
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	var rec idemRecord
	json.Unmarshal(raw, &rec)
	id := &idem{key: "acme/batch-1", hash: rec.Hash, exp: e.srv.now().Add(idempotencyTTL)}
	b := e.sp.NewBatch()
	b.PutIdempotency(id.key, id.value(202, partial, pending), id.exp)
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	r3 := e.post("/v1/messages/batch", body, "Idempotency-Key", "batch-1")
	var got batchAnswer
	r3.json(t, &got)
	if got.Accepted != final.Accepted || got.Failed != final.Failed {
		t.Fatalf("completed answer %s\nfinal %s", r3.Body, r1.Body)
	}
	for i := range got.Results {
		g, f := got.Results[i], final.Results[i]
		if g.ID != f.ID || (g.Status == 202) != (f.Status == 202) || fmt.Sprint(g.Recipients) != fmt.Sprint(f.Recipients) && f.Status == 202 {
			t.Errorf("item %d: completed %+v, final %+v", i, g, f)
		}
	}
	if e.queued() != queued {
		t.Fatal("the replay queued again")
	}
}

func TestGetMessage(t *testing.T) {
	e := newEnv(t, envOptions{noDelivery: true})
	a := mustAccept(t, e.post("/v1/messages", map[string]any{"from": "a@example.com", "to": "b@dest.test"}))
	r := e.do("GET", "/v1/messages/"+strings.ToLower(a.ID), e.sendKey, nil)
	var st statusAnswer
	r.json(t, &st)
	if r.Status != 200 || st.ID != a.ID || len(st.Recipients) != 1 || st.Recipients[0].State != "queued" || st.Recipients[0].Queue == "" || len(st.Events) != 1 {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	// Admin keys of the same tenant see it; other tenants do not.
	if r := e.do("GET", "/v1/messages/"+a.ID, e.adminKey, nil); r.Status != 200 {
		t.Errorf("admin: %d", r.Status)
	}
	if r := e.do("GET", "/v1/messages/"+a.ID, e.otherKey, nil); r.Status != 404 {
		t.Errorf("other tenant: %d %s", r.Status, r.Body)
	}
	for _, id := range []string{"", "x", "01ARZ3NDEKTSV4RRFFQ69G5FA", "81ARZ3NDEKTSV4RRFFQ69G5FAV", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "01ARZ3NDEKTSV4RRFFQ69G5FA%00"} {
		if r := e.do("GET", "/v1/messages/"+id, e.sendKey, nil); r.Status != 404 && r.Status != 405 {
			t.Errorf("id %q: %d", id, r.Status)
		}
	}
	if r := e.do("GET", "/v1/messages/"+a.ID, "", nil); r.Status != 401 {
		t.Errorf("no key: %d", r.Status)
	}
}

func TestHealthzAndOpenAPI(t *testing.T) {
	e := newEnv(t, envOptions{noDelivery: true})
	if r := e.do("GET", "/healthz", "", nil); r.Status != 200 || string(r.Body) != "ok" {
		t.Fatalf("healthz %d %q", r.Status, r.Body)
	}
	r := e.do("GET", "/v1/openapi.json", "", nil)
	var doc struct {
		OpenAPI string                    `json:"openapi"`
		Paths   map[string]map[string]any `json:"paths"`
	}
	r.json(t, &doc)
	if r.Status != 200 || !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi %d %.100s", r.Status, r.Body)
	}
	for path, method := range map[string]string{
		"/v1/messages": "post", "/v1/messages/raw": "post", "/v1/messages/batch": "post",
		"/v1/messages/{id}": "get", "/v1/admin/keys": "get", "/v1/openapi.json": "get", "/healthz": "get",
	} {
		if doc.Paths[path][method] == nil {
			t.Errorf("openapi.json lacks %s %s", method, path)
		}
	}
}

// HTTP/2 over TLS, and HTTP/1.1 keep-alive over TLS.
func TestTLSAndHTTP2(t *testing.T) {
	crt := testutil.SelfSignedCert(t, "relay.test", "127.0.0.1")
	e := newEnv(t, envOptions{listener: config.HTTPListener{TLS: &config.TLS{Cert: crt.CertFile, Key: crt.KeyFile}}})
	req, _ := http.NewRequest("POST", e.url+"/v1/messages", strings.NewReader(`{"from":"a@example.com","to":"b@dest.test","text":"x"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+e.sendKey)
	res, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != 202 || res.ProtoMajor != 2 {
		t.Fatalf("status %d over %s", res.StatusCode, res.Proto)
	}
	testutil.WaitFor(t, "delivery", func() bool { return len(e.sink.Messages()) == 1 })
	for _, sn := range e.stage.hooks() {
		if sn.TLS != "TLS1.3" {
			t.Fatalf("%s saw TLS %q", sn.Hook, sn.TLS)
		}
	}
}

func configListener(max int64) config.HTTPListener { return config.HTTPListener{MaxRequestSize: max} }

// TestBatchItemDecodeErrorNamesIndex: a type mismatch or an unknown field
// in one batch item is a 400 whose field names the item's index
// (messages[i].field), as for the items' other errors (docs/http-api.md).
func TestBatchItemDecodeErrorNamesIndex(t *testing.T) {
	e := newEnv(t, envOptions{})
	good := map[string]any{"from": "a@example.com", "to": "b@dest.test", "subject": "s", "text": "t"}
	cases := []struct {
		bad   map[string]any
		field string
	}{
		{map[string]any{"from": "a@example.com", "to": "b@dest.test", "subject": "s", "track_opens": "yes"}, "messages[2].track_opens"},
		{map[string]any{"from": "a@example.com", "to": "b@dest.test", "subject": "s", "track_open": true}, "messages[2].track_open"},
		{map[string]any{"from": "a@example.com", "to": "b@dest.test", "subject": 7}, "messages[2].subject"},
	}
	for _, c := range cases {
		r := e.post("/v1/messages/batch", map[string]any{"messages": []any{good, good, c.bad}})
		if r.Status != 400 {
			t.Fatalf("%v: %d %s", c.bad, r.Status, r.Body)
		}
		if got := r.errorOf(t); got.Field != c.field || !strings.Contains(got.Message, "messages[2]") {
			t.Errorf("%v: field %q message %q, want field %q", c.bad, got.Field, got.Message, c.field)
		}
	}
}
