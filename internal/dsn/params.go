package dsn

import (
	"errors"
	"strings"
	"unicode/utf8"

	"github.com/sluice-mta/sluice/internal/mailtext"
	"github.com/sluice-mta/sluice/pipeline"
)

// This file holds what RFC 3461 (the SMTP DSN extension) asks of the
// report side: what a recipient's NOTIFY asks for, xtext, and how ENVID
// and ORCPT are written into a report.

// Wants reports whether a recipient whose NOTIFY parameter is notify wants
// a DSN with this action (RFC 3461 section 4.1):
//
//   - NEVER (alone, or wrongly mixed with others) wants none;
//   - FAILURE wants "failed", DELAY wants "delayed", SUCCESS wants
//     "delivered", "relayed" and "expanded";
//   - no NOTIFY (nil or empty) is FAILURE,DELAY. RFC 3461 lets an MTA
//     read the absence as FAILURE or as FAILURE,DELAY; Sluice takes the
//     latter, like sendmail, so a sender that never heard of DSN still
//     learns that its mail is stuck (delay warnings can be turned off
//     with sluice.delivery { delay_warning = "0" }). Success is never a
//     default.
//
// Values are compared without regard to case.
func Wants(notify []string, action string) bool {
	if len(notify) == 0 {
		return action == ActionFailed || action == ActionDelayed
	}
	want := ""
	switch action {
	case ActionFailed:
		want = pipeline.NotifyFailure
	case ActionDelayed:
		want = pipeline.NotifyDelay
	case ActionDelivered, ActionRelayed, ActionExpanded:
		want = pipeline.NotifySuccess
	default:
		return false
	}
	found := false
	for _, n := range notify {
		n = strings.TrimSpace(n)
		if strings.EqualFold(n, pipeline.NotifyNever) {
			return false
		}
		if strings.EqualFold(n, want) {
			found = true
		}
	}
	return found
}

// ErrXtext is returned by XtextDecode for a malformed xtext.
var ErrXtext = errors.New("dsn: malformed xtext")

// XtextEncode encodes s as RFC 3461 xtext (section 4): every byte from
// "!" to "~" stays as it is except "+" and "=", which like every other
// byte (space, controls, the bytes of UTF-8) become "+" and two upper-case
// hex digits. Use it to pass ENVID and ORCPT on to a next hop.
func XtextEncode(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= '!' && c <= '~' && c != '+' && c != '=' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('+')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0xf])
	}
	return b.String()
}

// XtextDecode decodes an RFC 3461 xtext. Characters outside "!" to "~",
// a raw "=", and a "+" not followed by two hex digits are ErrXtext. The
// RFC wants upper-case hex digits; lower-case ones are accepted too (they
// are unambiguous, and refusing them would only lose a sender's DSN). The
// result may hold any byte: the caller checks what it may contain (an
// ENVID is printable ASCII, RFC 3461 section 4.4).
func XtextDecode(s string) (string, error) {
	if !strings.Contains(s, "+") {
		for i := 0; i < len(s); i++ {
			if s[i] < '!' || s[i] > '~' || s[i] == '=' {
				return "", ErrXtext
			}
		}
		return s, nil
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '+':
			if i+2 >= len(s) {
				return "", ErrXtext
			}
			hi, ok1 := unhex(s[i+1])
			lo, ok2 := unhex(s[i+2])
			if !ok1 || !ok2 {
				return "", ErrXtext
			}
			b.WriteByte(hi<<4 | lo)
			i += 2
		case c < '!' || c > '~' || c == '=':
			return "", ErrXtext
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// SplitORCPT splits an ORCPT value ("rfc822;bob@example.org", xtext
// already decoded) into its address type and address. ok is false when
// there is no "type;" prefix or no address.
func SplitORCPT(orcpt string) (addrType, addr string, ok bool) {
	t, a, found := strings.Cut(orcpt, ";")
	t, a = strings.TrimSpace(t), strings.TrimSpace(a)
	if !found || !isAtom(t) || a == "" {
		return "", "", false
	}
	return t, a, true
}

// envelopeIDField is the value of Original-Envelope-Id for an ENVID
// (xtext decoded). RFC 3461 section 4.4 makes an ENVID printable ASCII;
// such a value is written as it is. Anything else (controls, a line
// break, 8-bit bytes, runs of spaces) cannot be written as it is without
// being changed or injecting fields, so it is written xtext-encoded,
// which keeps it exact and on one line.
func envelopeIDField(id string) string {
	if id == "" {
		return ""
	}
	if len(id) <= maxValue && printable(id) {
		return id
	}
	enc := XtextEncode(id)
	if len(enc) > maxValue {
		enc = enc[:maxValue]
	}
	return enc
}

// originalRecipientField is the value of Original-Recipient for an ORCPT
// (RFC 3464 section 2.3.1: "address-type; address"). An ORCPT without a
// type gets the type of its address. An address that cannot be written as
// it is (controls; non-ASCII in an "rfc822" address; invalid UTF-8) is
// written xtext-encoded, the encoding it came in, so it never injects a
// field or a line and stays exact.
func originalRecipientField(orcpt string) string {
	t, a, ok := SplitORCPT(orcpt)
	if !ok {
		a = strings.TrimSpace(orcpt)
		if a == "" {
			return ""
		}
		t = addrType(a)
	}
	safe := len(a) <= maxValue && utf8.ValidString(a) && clean(a, maxValue) == a
	if safe && strings.EqualFold(t, "rfc822") && !mailtext.IsASCII(a) {
		safe = false
	}
	if !safe {
		a = XtextEncode(a)
		if len(a) > maxValue {
			a = a[:maxValue]
		}
	}
	return t + "; " + a
}

// printable reports whether s is printable ASCII with single interior
// spaces only: what a header-like field carries unchanged.
func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return clean(s, len(s)) == s
}
