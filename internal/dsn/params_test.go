package dsn

import (
	"errors"
	"strings"
	"testing"
)

func TestWants(t *testing.T) {
	all := []string{ActionFailed, ActionDelayed, ActionDelivered, ActionRelayed, ActionExpanded}
	tests := []struct {
		notify []string
		want   string // the actions wanted, in the order of all
	}{
		{nil, "failed delayed"}, // RFC 3461 4.1: the absence is FAILURE,DELAY here
		{[]string{}, "failed delayed"},
		{[]string{"NEVER"}, ""},
		{[]string{"never"}, ""},
		{[]string{"FAILURE"}, "failed"},
		{[]string{"DELAY"}, "delayed"},
		{[]string{"SUCCESS"}, "delivered relayed expanded"},
		{[]string{"SUCCESS", "FAILURE"}, "failed delivered relayed expanded"},
		{[]string{"success", " Delay "}, "delayed delivered relayed expanded"},
		{[]string{"FAILURE", "DELAY", "SUCCESS"}, "failed delayed delivered relayed expanded"},
		{[]string{"NEVER", "SUCCESS"}, ""}, // invalid; NEVER wins
		{[]string{"BOGUS"}, ""},
	}
	for _, tt := range tests {
		var got []string
		for _, a := range all {
			if Wants(tt.notify, a) {
				got = append(got, a)
			}
		}
		if strings.Join(got, " ") != tt.want {
			t.Errorf("Wants(%q) = %q, want %q", tt.notify, got, tt.want)
		}
	}
	if Wants(nil, "bounced") {
		t.Error("an unknown action is wanted")
	}
}

func TestXtext(t *testing.T) {
	tests := []struct{ dec, enc string }{
		{"", ""},
		{"order-42", "order-42"},
		{"a+b=c", "a+2Bb+3Dc"},
		{"rfc822;bob@example.org", "rfc822;bob@example.org"},
		{"two words", "two+20words"},
		{"line\r\nInjected: yes", "line+0D+0AInjected:+20yes"},
		{"zoë", "zo+C3+AB"},
		{"\x00\x7f~!", "+00+7F~!"},
	}
	for _, tt := range tests {
		if got := XtextEncode(tt.dec); got != tt.enc {
			t.Errorf("XtextEncode(%q) = %q, want %q", tt.dec, got, tt.enc)
		}
		if got, err := XtextDecode(tt.enc); err != nil || got != tt.dec {
			t.Errorf("XtextDecode(%q) = %q, %v, want %q", tt.enc, got, err, tt.dec)
		}
	}
	// Lower-case hex is read too.
	if got, err := XtextDecode("a+2bb"); err != nil || got != "a+b" {
		t.Errorf("lower-case hex: %q %v", got, err)
	}
	for _, bad := range []string{"+", "+2", "a+G0", "+-1", "a b", "a=b", "zoë", "a\r\nb", "+2B+"} {
		if got, err := XtextDecode(bad); !errors.Is(err, ErrXtext) {
			t.Errorf("XtextDecode(%q) = %q, %v, want ErrXtext", bad, got, err)
		}
	}
}

func FuzzXtext(f *testing.F) {
	f.Add("a+b=c")
	f.Add("zoë\r\n\x00")
	f.Fuzz(func(t *testing.T, s string) {
		enc := XtextEncode(s)
		for i := 0; i < len(enc); i++ {
			if enc[i] < '!' || enc[i] > '~' || enc[i] == '=' {
				t.Fatalf("XtextEncode(%q) = %q has byte %q", s, enc, enc[i])
			}
		}
		if dec, err := XtextDecode(enc); err != nil || dec != s {
			t.Fatalf("round trip of %q: %q, %v", s, dec, err)
		}
	})
}

func TestSplitORCPT(t *testing.T) {
	tests := []struct {
		in, typ, addr string
		ok            bool
	}{
		{"rfc822;bob@example.org", "rfc822", "bob@example.org", true},
		{"RFC822; bob@example.org", "RFC822", "bob@example.org", true},
		{"utf-8;zoë@example.org", "utf-8", "zoë@example.org", true},
		{"bob@example.org", "", "", false},
		{"rfc822;", "", "", false},
		{`"a;b"@example.org`, "", "", false},
	}
	for _, tt := range tests {
		typ, addr, ok := SplitORCPT(tt.in)
		if typ != tt.typ || addr != tt.addr || ok != tt.ok {
			t.Errorf("SplitORCPT(%q) = %q %q %v", tt.in, typ, addr, ok)
		}
	}
}

func TestReportFields(t *testing.T) {
	env := []struct{ in, want string }{
		{"", ""},
		{"order-42", "order-42"},
		{"order 42", "order 42"},
		{"a\r\nReporting-MTA: dns; evil", "a+0D+0AReporting-MTA:+20dns;+20evil"},
		{"  padded", "+20+20padded"},
		{"zoë", "zo+C3+AB"},
	}
	for _, tt := range env {
		if got := envelopeIDField(tt.in); got != tt.want {
			t.Errorf("envelopeIDField(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	orcpt := []struct{ in, want string }{
		{"", ""},
		{"rfc822;bob@example.org", "rfc822; bob@example.org"},
		{"bob@example.org", "rfc822; bob@example.org"},
		{"zoë@example.org", "utf-8; zoë@example.org"},
		{"utf-8;zoë@example.org", "utf-8; zoë@example.org"},
		{"rfc822;zoë@example.org", "rfc822; zo+C3+AB@example.org"}, // rfc822 is ASCII
		{"rfc822;bob@x\r\nAction: delivered", "rfc822; bob@x+0D+0AAction:+20delivered"},
		{`rfc822;"odd user"@example.org`, `rfc822; "odd user"@example.org`},
		{"x400;/C=US/ADMD=X/", "x400; /C=US/ADMD=X/"},
	}
	for _, tt := range orcpt {
		if got := originalRecipientField(tt.in); got != tt.want {
			t.Errorf("originalRecipientField(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestORCPTAndENVIDInReport: the fields reach the delivery-status part,
// one line each, whatever the sender put in them.
func TestORCPTAndENVIDInReport(t *testing.T) {
	r := sampleReport()
	r.EnvelopeID = "env\r\nAction: delivered"
	r.Recipients[0].OriginalRecipient = "rfc822;Bob@Example.org\r\nAction: delivered"
	msg, err := Build(r)
	if err != nil {
		t.Fatal(err)
	}
	p := parse(t, msg)
	if got := p.perMessage.Get("Original-Envelope-Id"); got != "env+0D+0AAction:+20delivered" {
		t.Errorf("Original-Envelope-Id = %q", got)
	}
	bob := p.perRcpt[0]
	if got := bob.Get("Original-Recipient"); got != "rfc822; Bob@Example.org+0D+0AAction:+20delivered" {
		t.Errorf("Original-Recipient = %q", got)
	}
	if got := bob.Values("Action"); len(got) != 1 || got[0] != "failed" {
		t.Errorf("Action fields = %q", got)
	}
	if p.perRcpt[1].Has("Original-Recipient") {
		t.Error("a recipient without ORCPT has Original-Recipient")
	}
}

func TestReturnFull(t *testing.T) {
	base := sampleReport()
	base.ReturnFull = true
	tests := []struct {
		name     string
		msg      string
		max      int
		full     bool   // returned whole
		note     string // in the text part
		wantBody string // in the returned part
	}{
		{"whole", origMessage, 0, true, "", "SECRET BODY"},
		{"bare LF becomes CRLF", "Subject: x\n\nline1\nline2\n", 0, true, "", "line1\r\nline2\r\n"},
		{"8-bit", "Subject: Grüße\r\n\r\nKäse\r\n", 0, true, "", "Käse"},
		{"too big", origMessage, 50, false, "more than the 50 bytes", "Subject: Your invoice"},
		{"NUL", "Subject: x\r\n\r\na\x00b\r\n", 0, false, "contains NUL characters", "Subject: x"},
		{"bare CR", "Subject: x\r\n\r\na\rb\r\n", 0, false, "contains a bare CR", "Subject: x"},
		{"long line", "Subject: x\r\n\r\n" + strings.Repeat("y", 999) + "\r\n", 0, false, "longer than 998", "Subject: x"},
		{"unreadable", "", 0, false, "could not be read", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := base
			r.Header, r.MaxReturn = []byte(tt.msg), tt.max
			out, err := Build(r)
			if err != nil {
				t.Fatal(err)
			}
			p := parse(t, out)
			last := p.parts[len(p.parts)-1]
			if tt.full {
				if last != "message/rfc822" || !strings.Contains(p.full, tt.wantBody) {
					t.Fatalf("part %s, body %q", last, p.full)
				}
				if !strings.Contains(p.text, "your message are attached") {
					t.Errorf("text:\n%s", p.text)
				}
				return
			}
			if last != "text/rfc822-headers" || !strings.Contains(p.orig, tt.wantBody) || strings.Contains(p.orig, "SECRET") {
				t.Fatalf("part %s, headers %q", last, p.orig)
			}
			if !strings.Contains(strings.ReplaceAll(p.text, "\r\n    ", " "), tt.note) {
				t.Errorf("text lacks %q:\n%s", tt.note, p.text)
			}
		})
	}
	// RET=HDRS (the default) never returns the body.
	r := sampleReport()
	out, _ := Build(r)
	if strings.Contains(string(out), "SECRET") || strings.Contains(string(out), "message/rfc822") {
		t.Error("headers-only report returned the body")
	}
}

// TestReturnFullBoundary: a random boundary never occurs in the returned
// message.
func TestReturnFullBoundary(t *testing.T) {
	r := sampleReport()
	r.ReturnFull, r.Boundary = true, ""
	msg, err := Build(r)
	if err != nil {
		t.Fatal(err)
	}
	p := parse(t, msg)
	if len(p.parts) != 3 || !strings.Contains(p.full, "SECRET BODY") {
		t.Fatalf("parts %v", p.parts)
	}
}
