package dsn

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"

	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/pipeline"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

var (
	arrival = time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	attempt = time.Date(2026, 11, 22, 10, 5, 30, 0, time.UTC)
)

const origMessage = "Received: from client.test ([192.0.2.9])\r\n\tby relay.sluice.test with ESMTPS id 01JABC\r\n" +
	"From: App <app@sender.test>\r\nTo: bob@example.org, carol@example.org\r\n" +
	"Subject: Your invoice\r\nMessage-ID: <inv-1234@sender.test>\r\n\r\n" +
	"SECRET BODY that must not be returned\r\n"

func sampleReport() Report {
	return Report{
		ReportingMTA: "relay.sluice.test",
		Sender:       "app@sender.test",
		MessageID:    "01JABCDEF0123456789",
		Arrival:      arrival,
		Header:       []byte(origMessage),
		Date:         time.Date(2026, 11, 22, 10, 6, 0, 0, time.UTC),
		ReportID:     "dsn-01JABCDEF0123456789",
		Boundary:     "sluice-boundary-0123456789",
		Recipients: []Recipient{
			{
				Address:        "bob@example.org",
				Action:         ActionFailed,
				Status:         "5.1.1",
				DiagnosticCode: "smtp; 550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown in virtual mailbox table",
				RemoteMTA:      "mx1.example.org",
				LastAttempt:    attempt,
			},
			{
				Address:        "carol@example.org",
				Action:         ActionDelayed,
				Status:         "4.2.2",
				DiagnosticCode: "smtp; 452 4.2.2 mailbox full",
				RemoteMTA:      "mx1.example.org",
				LastAttempt:    attempt,
				WillRetryUntil: arrival.Add(120 * time.Hour),
			},
		},
	}
}

// goldenReports are the report types Sluice sends, one golden file each.
func goldenReports() map[string]Report {
	failed := sampleReport() // a failure and a delay in one report

	delayed := sampleReport()
	delayed.EnvelopeID = "order-42 batch 7"
	delayed.Recipients = []Recipient{delayed.Recipients[1]}
	delayed.Recipients[0].OriginalRecipient = "rfc822;Carol@Example.ORG"

	relayed := sampleReport()
	relayed.EnvelopeID = "order-42"
	relayed.Recipients = []Recipient{
		{Address: "bob@example.org", OriginalRecipient: "rfc822;bob@example.org", Action: ActionRelayed,
			Status: "2.0.0", RemoteMTA: "mx1.example.org", LastAttempt: attempt},
		{Address: "carol@example.org", Action: ActionDelivered, Status: "2.0.0", LastAttempt: attempt},
	}

	full := sampleReport()
	full.ReturnFull = true
	full.Recipients = full.Recipients[:1]

	tooBig := full
	tooBig.MaxReturn = 100

	return map[string]Report{
		"report": failed, "delayed": delayed, "relayed": relayed, "full": full, "full_too_big": tooBig,
	}
}

func TestGolden(t *testing.T) {
	for name, r := range goldenReports() {
		t.Run(name, func(t *testing.T) {
			got, err := Build(r)
			if err != nil {
				t.Fatal(err)
			}
			parse(t, got) // well-formed, CRLF, line lengths
			path := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("Build output differs from %s (run go test -update after checking the diff)\n--- got ---\n%s", path, got)
			}
		})
	}
}

// parsed is a report read back with go-message.
type parsed struct {
	header     mail.Header
	params     map[string]string
	parts      []string // media types
	text       string
	perMessage textproto.Header
	perRcpt    []textproto.Header
	orig       string // text/rfc822-headers
	full       string // message/rfc822
}

func parse(t *testing.T, msg []byte) parsed {
	t.Helper()
	checkLines(t, msg)
	r, err := mail.CreateReader(bytes.NewReader(msg))
	if err != nil {
		t.Fatalf("mail.CreateReader: %v", err)
	}
	var p parsed
	p.header = r.Header
	mt, params, err := r.Header.ContentType()
	if err != nil || mt != "multipart/report" {
		t.Fatalf("Content-Type = %q, %v", mt, err)
	}
	p.params = params
	for {
		part, err := r.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("NextPart: %v", err)
		}
		ct, _, _ := part.Header.(interface {
			ContentType() (string, map[string]string, error)
		}).ContentType()
		p.parts = append(p.parts, ct)
		body, err := io.ReadAll(part.Body)
		if err != nil {
			t.Fatalf("reading %s: %v", ct, err)
		}
		switch ct {
		case "text/plain":
			p.text = string(body)
		case "message/delivery-status":
			p.perMessage, p.perRcpt = parseStatus(t, body)
		case "text/rfc822-headers":
			p.orig = string(body)
		case "message/rfc822":
			p.full = string(body)
		}
	}
	return p
}

// parseStatus splits a delivery-status body into its field blocks.
func parseStatus(t *testing.T, body []byte) (textproto.Header, []textproto.Header) {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(body))
	var blocks []textproto.Header
	for {
		if _, err := br.Peek(1); err == io.EOF {
			break
		}
		h, err := textproto.ReadHeader(br)
		if err != nil {
			t.Fatalf("delivery-status block %d: %v\n%s", len(blocks), err, body)
		}
		blocks = append(blocks, h)
	}
	if len(blocks) == 0 {
		t.Fatal("empty delivery-status")
	}
	return blocks[0], blocks[1:]
}

// checkLines asserts CRLF line endings and the 998-character limit.
func checkLines(t *testing.T, msg []byte) {
	t.Helper()
	for i, l := range bytes.SplitAfter(msg, []byte("\n")) {
		if len(l) == 0 {
			continue
		}
		if !bytes.HasSuffix(l, []byte("\r\n")) {
			t.Fatalf("line %d not CRLF-terminated: %q", i+1, l)
		}
		if bytes.Count(l, []byte("\r")) != 1 {
			t.Fatalf("line %d has a bare CR: %q", i+1, l)
		}
		if len(l)-2 > 998 {
			t.Fatalf("line %d is %d characters long", i+1, len(l)-2)
		}
	}
}

func TestStructure(t *testing.T) {
	msg, err := Build(sampleReport())
	if err != nil {
		t.Fatal(err)
	}
	p := parse(t, msg)

	for k, want := range map[string]string{
		"From":           "Mail Delivery System <MAILER-DAEMON@relay.sluice.test>",
		"To":             "<app@sender.test>",
		"Subject":        "Undelivered Mail Returned to Sender",
		"Auto-Submitted": "auto-replied",
		"MIME-Version":   "1.0",
		"Message-Id":     "<dsn-01JABCDEF0123456789@relay.sluice.test>",
	} {
		if got := p.header.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if d, err := p.header.Date(); err != nil || !d.Equal(time.Date(2026, 11, 22, 10, 6, 0, 0, time.UTC)) {
		t.Errorf("Date = %v, %v", d, err)
	}
	if p.params["report-type"] != "delivery-status" {
		t.Errorf("report-type = %q", p.params["report-type"])
	}
	if want := []string{"text/plain", "message/delivery-status", "text/rfc822-headers"}; strings.Join(p.parts, ",") != strings.Join(want, ",") {
		t.Fatalf("parts = %v, want %v", p.parts, want)
	}

	if got := p.perMessage.Get("Reporting-MTA"); got != "dns; relay.sluice.test" {
		t.Errorf("Reporting-MTA = %q", got)
	}
	if got := p.perMessage.Get("Arrival-Date"); got != "Sun, 22 Nov 2026 10:00:00 +0000" {
		t.Errorf("Arrival-Date = %q", got)
	}
	if got := p.perMessage.Get("X-Sluice-Message-Id"); got != "01JABCDEF0123456789" {
		t.Errorf("X-Sluice-Message-ID = %q", got)
	}
	if len(p.perRcpt) != 2 {
		t.Fatalf("%d recipient blocks, want 2", len(p.perRcpt))
	}
	bob, carol := p.perRcpt[0], p.perRcpt[1]
	for k, want := range map[string]string{
		"Final-Recipient":   "rfc822; bob@example.org",
		"Action":            "failed",
		"Status":            "5.1.1",
		"Remote-MTA":        "dns; mx1.example.org",
		"Diagnostic-Code":   "smtp; 550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown in virtual mailbox table",
		"Last-Attempt-Date": "Sun, 22 Nov 2026 10:05:30 +0000",
	} {
		if got := unfold(bob.Get(k)); got != want {
			t.Errorf("bob %s = %q, want %q", k, got, want)
		}
	}
	if bob.Has("Will-Retry-Until") {
		t.Error("a failed recipient has Will-Retry-Until")
	}
	if carol.Get("Action") != "delayed" || carol.Get("Status") != "4.2.2" || carol.Get("Will-Retry-Until") != "Fri, 27 Nov 2026 10:00:00 +0000" {
		t.Errorf("carol block: %v %v %v", carol.Get("Action"), carol.Get("Status"), carol.Get("Will-Retry-Until"))
	}

	if !strings.Contains(p.text, "host mx1.example.org said: 550 5.1.1") || !strings.Contains(p.text, "<carol@example.org>") {
		t.Errorf("text part lacks the recipients:\n%s", p.text)
	}
	if !strings.Contains(p.orig, "Message-ID: <inv-1234@sender.test>\r\n") || !strings.Contains(p.orig, "\tby relay.sluice.test") {
		t.Errorf("original headers part:\n%s", p.orig)
	}
	if strings.Contains(string(msg), "SECRET BODY") {
		t.Error("the original body was returned")
	}
}

// unfold undoes header folding as a reader would.
func unfold(s string) string { return strings.ReplaceAll(s, "\r\n", "") }

func TestSubjects(t *testing.T) {
	for action, want := range map[string]string{
		ActionFailed:    "Undelivered Mail Returned to Sender",
		ActionDelayed:   "Delayed Mail (still being retried)",
		ActionDelivered: "Successful Mail Delivery Report",
	} {
		r := sampleReport()
		r.Recipients = []Recipient{{Address: "bob@example.org", Action: action}}
		msg, err := Build(r)
		if err != nil {
			t.Fatal(err)
		}
		p := parse(t, msg)
		if got := p.header.Get("Subject"); got != want {
			t.Errorf("%s: Subject = %q, want %q", action, got, want)
		}
		wantStatus := map[string]string{ActionFailed: "5.0.0", ActionDelayed: "4.0.0", ActionDelivered: "2.0.0"}[action]
		if got := p.perRcpt[0].Get("Status"); got != wantStatus {
			t.Errorf("%s: default Status = %q, want %q", action, got, wantStatus)
		}
	}
}

func TestBuildErrors(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Report)
		want error
	}{
		{"null sender", func(r *Report) { r.Sender = "" }, ErrNullSender},
		{"no recipients", func(r *Report) { r.Recipients = nil }, ErrNoRecipients},
		{"no host", func(r *Report) { r.ReportingMTA = " " }, nil},
		{"bad action", func(r *Report) { r.Recipients[0].Action = "bounced" }, nil},
		{"empty address", func(r *Report) { r.Recipients[0].Address = "\r\n" }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := sampleReport()
			tt.mod(&r)
			_, err := Build(r)
			if err == nil {
				t.Fatal("Build succeeded")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestNastyDiagnostics(t *testing.T) {
	long := strings.Repeat("x", 5000)
	tests := []struct {
		name string
		diag string
		want string // expected unfolded Diagnostic-Code; "" = only check invariants
	}{
		{name: "field injection", diag: "smtp; 550 no\r\nAction: delivered\r\n\r\nFinal-Recipient: rfc822; evil@x.test",
			want: "smtp; 550 no Action: delivered Final-Recipient: rfc822; evil@x.test"},
		{name: "bare LF and CR", diag: "smtp; 550 a\nb\rc", want: "smtp; 550 a b c"},
		{name: "NUL and controls", diag: "smtp; 550 a\x00b\x1bc\x7fd\u0085e", want: "smtp; 550 a b c d e"},
		{name: "boundary injection", diag: "smtp; 550 \r\n--sluice-boundary-0123456789--\r\n",
			want: "smtp; 550 --sluice-boundary-0123456789--"},
		{name: "no type", diag: "550 5.1.1 no such user", want: "smtp; 550 5.1.1 no such user"},
		{name: "other type", diag: "X-Sluice; DNS lookup failed", want: "X-Sluice; DNS lookup failed"},
		{name: "utf-8", diag: "smtp; 550 5.1.1 Benutzer unbekannt: jörg", want: "smtp; 550 5.1.1 Benutzer unbekannt: jörg"},
		{name: "invalid utf-8", diag: "smtp; 550 \xff\xfe bad", want: "smtp; 550 ?? bad"},
		{name: "one huge word", diag: "smtp; 550 " + long},
		{name: "many words", diag: "smtp; 550 " + strings.Repeat("word ", 2000)},
		{name: "only garbage", diag: "\r\n\x00\r\n", want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := sampleReport()
			r.Recipients[0].DiagnosticCode = tt.diag
			r.Recipients[0].RemoteMTA = "mx.test\r\nAction: delivered"
			msg, err := Build(r)
			if err != nil {
				t.Fatal(err)
			}
			p := parse(t, msg) // also checks CRLF and line lengths
			if len(p.perRcpt) != 2 {
				t.Fatalf("%d recipient blocks, want 2", len(p.perRcpt))
			}
			b := p.perRcpt[0]
			if got := b.Values("Action"); len(got) != 1 || got[0] != "failed" {
				t.Fatalf("Action fields = %q", got)
			}
			if got := b.Values("Final-Recipient"); len(got) != 1 || got[0] != "rfc822; bob@example.org" {
				t.Fatalf("Final-Recipient fields = %q", got)
			}
			if got := b.Get("Remote-MTA"); got != "dns; mx.test Action: delivered" {
				t.Fatalf("Remote-MTA = %q", got)
			}
			got := unfold(b.Get("Diagnostic-Code"))
			if tt.want != "" || tt.diag == "\r\n\x00\r\n" {
				if got != tt.want {
					t.Fatalf("Diagnostic-Code = %q, want %q", got, tt.want)
				}
			}
			if len(got) > maxDiagnostic+10 {
				t.Fatalf("Diagnostic-Code is %d bytes", len(got))
			}
			if len(p.parts) != 3 {
				t.Fatalf("parts = %v", p.parts)
			}
		})
	}
}

func FuzzBuild(f *testing.F) {
	f.Add("smtp; 550 5.1.1 no such user", "bob@example.org", "mx.example.org", "5.1.1")
	f.Add("\r\n.\r\n--b--\r\nAction: x", "a\r\nb@c", "\x00", "9.9.9")
	f.Add(strings.Repeat("é", 700), "jörg@example.org", strings.Repeat("m", 400), "")
	f.Fuzz(func(t *testing.T, diag, addr, remote, status string) {
		r := sampleReport()
		r.Recipients[0].DiagnosticCode = diag
		r.Recipients[0].Address = addr
		r.Recipients[0].RemoteMTA = remote
		r.Recipients[0].Status = status
		msg, err := Build(r)
		if err != nil {
			if clean(addr, maxValue) == "" {
				return // an empty address is a caller error
			}
			t.Fatal(err)
		}
		p := parse(t, msg)
		if len(p.parts) != 3 || len(p.perRcpt) != 2 {
			t.Fatalf("parts %v, %d recipient blocks", p.parts, len(p.perRcpt))
		}
		if got := p.perRcpt[0].Values("Action"); len(got) != 1 || got[0] != "failed" {
			t.Fatalf("Action fields = %q", got)
		}
		if got := p.perRcpt[1].Get("Final-Recipient"); got != "rfc822; carol@example.org" {
			t.Fatalf("second block Final-Recipient = %q", got)
		}
		if s := p.perRcpt[0].Get("Status"); !statusRE.MatchString(s) {
			t.Fatalf("Status = %q", s)
		}
	})
}

func TestHeaderSection(t *testing.T) {
	tests := []struct{ in, want string }{
		{"A: 1\r\nB: 2\r\n\r\nbody\r\n", "A: 1\r\nB: 2\r\n"},
		{"A: 1\nB: 2\n\nbody\n", "A: 1\r\nB: 2\r\n"},
		{"A: 1\r\n  folded\r\n", "A: 1\r\n  folded\r\n"},
		{"A: 1", "A: 1\r\n"},
		{"A: x\ry\x00z\r\n\r\n", "A: x y z\r\n"},
		{"", ""},
		{"A: " + strings.Repeat("y", 2000) + "\r\n", "A: " + strings.Repeat("y", 995) + "\r\n"},
	}
	for _, tt := range tests {
		if got := string(headerSection([]byte(tt.in))); got != tt.want {
			t.Errorf("headerSection(%.40q) = %.60q, want %.60q", tt.in, got, tt.want)
		}
	}
}

func TestRecipientFromError(t *testing.T) {
	remote := pipeline.Remote{Host: "mx1.example.org", IP: "192.0.2.1"}
	rcptErr := &pipeline.Error{Code: 550, Enhanced: pipeline.EnhancedCode{5, 1, 1}, Message: "no such user",
		Cause: &delivery.ReplyError{Remote: remote, Command: "RCPT", Code: 550, Enhanced: pipeline.EnhancedCode{5, 1, 1}, Text: "no such user"}}
	// AUTH failures are reported as 451 4.7.8 around the remote's 535.
	authErr := &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 7, 8}, Message: "authentication failed: 535 5.7.8 bad",
		Cause: &delivery.ReplyError{Remote: remote, Command: "AUTH", Code: 535, Enhanced: pipeline.EnhancedCode{5, 7, 8}, Text: "bad"}}
	dnsErr := pipeline.Errorf(550, pipeline.EnhancedCode{5, 1, 2}, "example.org: domain does not exist")

	tests := []struct {
		name string
		err  error
		want Recipient
	}{
		{"remote reply", rcptErr, Recipient{Address: "bob@example.org", Action: ActionFailed, Status: "5.1.1",
			DiagnosticCode: "smtp; 550 5.1.1 no such user", RemoteMTA: "mx1.example.org"}},
		{"temporary with a permanent-looking cause", authErr, Recipient{Address: "bob@example.org", Action: ActionDelayed, Status: "4.7.8",
			DiagnosticCode: "smtp; 535 5.7.8 bad", RemoteMTA: "mx1.example.org"}},
		{"local decision", dnsErr, Recipient{Address: "bob@example.org", Action: ActionFailed, Status: "5.1.2",
			DiagnosticCode: "x-sluice; 550 5.1.2 example.org: domain does not exist"}},
		{"unknown error", errors.New("disk on fire"), Recipient{Address: "bob@example.org", Action: ActionDelayed, Status: "4.3.0",
			DiagnosticCode: "x-sluice; 451 4.3.0 Internal error, try again later"}},
		{"success", nil, Recipient{Address: "bob@example.org", Action: ActionDelivered, Status: "2.0.0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RecipientFromError("bob@example.org", tt.err); got != tt.want {
				t.Fatalf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestRandomIDsAndBoundary(t *testing.T) {
	r := sampleReport()
	r.ReportID, r.Boundary, r.Date = "", "", time.Time{}
	a, err := Build(r)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Build(r)
	pa, pb := parse(t, a), parse(t, b)
	if pa.header.Get("Message-Id") == pb.header.Get("Message-Id") || pa.params["boundary"] == pb.params["boundary"] {
		t.Fatal("two reports share a Message-ID or boundary")
	}
	if len(pa.parts) != 3 {
		t.Fatalf("parts = %v", pa.parts)
	}
}

func TestUTF8Addresses(t *testing.T) {
	r := sampleReport()
	r.Sender = "jörg@sender.test"
	r.Recipients[0].Address = "zoë@example.org"
	msg, err := Build(r)
	if err != nil {
		t.Fatal(err)
	}
	p := parse(t, msg)
	if got := p.perRcpt[0].Get("Final-Recipient"); got != "utf-8; zoë@example.org" {
		t.Fatalf("Final-Recipient = %q", got)
	}
	if !strings.Contains(p.text, "<zoë@example.org>") {
		t.Fatalf("text part (decoded) lacks the address:\n%s", p.text)
	}
}

// TestUTF8HeadersStaySevenBit: returned headers holding UTF-8 (a RFC 6532
// Subject) are quoted-printable, so the report is 7-bit and reaches a
// sender whose MX offers neither 8BITMIME nor SMTPUTF8.
func TestUTF8HeadersStaySevenBit(t *testing.T) {
	r := sampleReport()
	r.Header = []byte("From: app@sender.test\r\nSubject: Gr\xc3\xbc\xc3\x9fe\r\n\r\nbody\r\n")
	out, err := Build(r)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range out {
		if c >= 0x80 {
			t.Fatalf("8-bit byte at %d in the report:\n%s", i, out)
		}
	}
	if !strings.Contains(string(out), "Content-Type: text/rfc822-headers") || !strings.Contains(string(out), "Subject: Gr=C3=BC=C3=9Fe") {
		t.Fatalf("headers part not quoted-printable:\n%s", out)
	}
}
