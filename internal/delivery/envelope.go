package delivery

import (
	"bytes"
	"slices"
	"strings"

	"github.com/sluice-mta/sluice/internal/mailtext"
	"github.com/sluice-mta/sluice/pipeline"
)

// Envelope is what Session.Deliver sends besides the content: the sender
// and its MAIL FROM parameters, the recipients and their RCPT TO
// parameters, as spooled.
//
// Addresses are sent byte for byte inside <...>: they must already be in
// RFC 5321 path form (a local part that needs quoting is quoted, as
// `"odd user"@dest.example`). Nothing here splits, unquotes or re-quotes
// them.
type Envelope struct {
	From   string // "" is the null sender <>
	Params pipeline.MailParams
	Rcpts  []Rcpt
	// MsgID is the spooled message's id; it is not sent (a capture
	// delivery files the copy under it).
	MsgID string
	// OwnReport marks a delivery status notification this relay
	// generated (spool source "dsn"): with the null sender and
	// REQUIRETLS it may go without REQUIRETLS to a hop that does not
	// qualify (see requiretls.go). A client's null-sender message does
	// not get that exemption.
	OwnReport bool
	// Tags and Source are the spooled message's (pipeline.Meta); not
	// sent (a capture delivery records them, and need not read the
	// spool for them). Source "" when the caller does not know them.
	Tags   []string
	Source string
}

// Rcpt is one envelope recipient.
type Rcpt struct {
	Addr   string
	Params pipeline.RcptParams
	// Attempt is this delivery attempt's number for the recipient, from
	// 1; not sent (a capture delivery's simulated replies count on it).
	Attempt int
}

// Result is the outcome of a Deliver for one recipient.
type Result struct {
	// Err is nil when the next hop accepted the message for this
	// recipient, else a *pipeline.Error classified as Rules says
	// (pipeline.IsTemporary tells a deferral from a bounce).
	Err error
	// Reply is the next hop's reply that decided this recipient: on
	// success the reply to the end of data (code, enhanced code, text as
	// received; the enhanced code is X.0.0 when the hop sent none); on
	// failure pipeline.ResponseOf(Err). nil when no reply was received.
	Reply *pipeline.Response
	// DSN reports that the next hop advertised the DSN extension (RFC
	// 3461) and accepted the recipient with our NOTIFY/ORCPT: from now on
	// it is responsible for the delivery status notifications this
	// recipient asked for. When false for an accepted recipient that asked
	// for NOTIFY=SUCCESS, Sluice owes a "relayed" DSN (RFC 3461 section
	// 4.1 and 6.2.6). Only meaningful when Err is nil.
	DSN bool
}

// Needs describes what a message needs of a next hop, computed once per
// Deliver from the envelope and the bytes.
type Needs struct {
	EightBit bool // 8-bit content: bytes above 127 (or BINARYMIME declared)
	// SMTPUTF8: the message cannot go without it: the sender is not
	// ASCII, or SMTPUTF8 was requested and the header holds UTF-8.
	SMTPUTF8 bool
	// AskUTF8: request SMTPUTF8 of a hop that offers it (it was
	// requested, or the sender is not ASCII).
	AskUTF8 bool
}

// MessageNeeds reports what env and data need of a next hop, from what
// the message is, not what a client declared: many clients (Go's
// net/smtp among them) declare BODY=8BITMIME and SMTPUTF8 whenever the
// server offers them. So the content is 8-bit when it holds a byte above
// 127 (or BINARYMIME was declared), whatever BODY said; and a message
// that asked for SMTPUTF8 needs it only when its header holds UTF-8 (RFC
// 6532) or its sender is not ASCII: an all-ASCII message goes to a hop
// without SMTPUTF8 unchanged, as Postfix does. A non-ASCII recipient
// address is checked per recipient. The scan reads 8 bytes at a time.
func MessageNeeds(env *Envelope, data []byte) Needs {
	hdr := data
	if i := bytes.Index(data, []byte("\r\n\r\n")); i >= 0 {
		hdr = data[:i]
	}
	n := Needs{
		AskUTF8:  env.Params.SMTPUTF8 || !mailtext.IsASCII(env.From),
		SMTPUTF8: !mailtext.IsASCII(env.From) || (env.Params.SMTPUTF8 && mailtext.Has8Bit(hdr)),
		EightBit: strings.EqualFold(env.Params.Body, pipeline.BodyBinaryMIME) || mailtext.Has8Bit(data),
	}
	return n
}

// xtext encodes s as RFC 3461 section 4 xtext: "+", "=" and bytes outside
// "!" to "~" become "+XX" (upper-case hex).
func xtext(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '!' || c > '~' || c == '+' || c == '=' {
			b.WriteByte('+')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// dsnMailParams returns " RET=... ENVID=..." for a hop that offers DSN.
func dsnMailParams(p pipeline.MailParams) string {
	var b strings.Builder
	switch ret := strings.ToUpper(p.Ret); ret {
	case "FULL", "HDRS":
		b.WriteString(" RET=" + ret)
	}
	if p.EnvID != "" {
		b.WriteString(" ENVID=" + xtext(p.EnvID))
	}
	return b.String()
}

// dsnRcptParams returns " NOTIFY=... ORCPT=..." for a hop that offers DSN.
// Unknown NOTIFY values are dropped, NEVER goes alone (RFC 3461 section
// 4.1);
// ORCPT keeps its address type and xtext-encodes the address.
func dsnRcptParams(p pipeline.RcptParams) string {
	var b strings.Builder
	var notify []string
scan:
	for _, v := range p.Notify {
		switch v = strings.ToUpper(v); v {
		case pipeline.NotifyNever:
			notify = []string{v}
			break scan
		case pipeline.NotifySuccess, pipeline.NotifyFailure, pipeline.NotifyDelay:
			if !slices.Contains(notify, v) {
				notify = append(notify, v)
			}
		}
	}
	if len(notify) > 0 {
		b.WriteString(" NOTIFY=" + strings.Join(notify, ","))
	}
	if typ, addr, ok := strings.Cut(p.ORCPT, ";"); ok && typ != "" && addr != "" && isAtom(typ) {
		b.WriteString(" ORCPT=" + typ + ";" + xtext(addr))
	}
	return b.String()
}

// isAtom reports whether s is a safe address type such as "rfc822".
func isAtom(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
