package delivery

import (
	"fmt"
	"strings"

	"github.com/sluice-mta/sluice/pipeline"
)

// Rule is one row of the reply-code table: how delivery classifies a next
// hop's reply to a command, or a failure Sluice detects itself, and what
// happens next. The queue then acts on the class alone (a 4xx defers, a
// 5xx bounces, see package queue), so this table is the whole outbound
// half of Sluice's reply-code decisions.
type Rule struct {
	// Phase is the command the reply answers ("greeting", "EHLO",
	// "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "end of data", "any"),
	// or "local" for a failure Sluice decides without a reply.
	Phase string
	// Reply is the reply code or class ("421", "4xx", "5xx except 552"),
	// or for a local failure what went wrong.
	Reply string
	// Recorded is the code and enhanced code that end up in the event
	// and in the bounce: "as received" keeps the next hop's own.
	Recorded string
	// Class is "temporary" (deferred, retried), "permanent" (bounced),
	// "success" or "-" when the reply ends nothing by itself.
	Class string
	// Effect says what happens next.
	Effect string
}

// Rules is the reply-code table, in the order docs/delivery.md shows it.
//
// General rules that the rows rely on:
//   - The enhanced code (RFC 3463) is the one at the start of the reply's
//     first line when its class matches the reply code; otherwise
//     (missing, or "550 4.1.1") it is X.0.0 with the reply's class.
//   - A failure's class follows its reply code: 4xx temporary, 5xx
//     permanent. The queue treats any error that is not a
//     *pipeline.Error as temporary.
//   - Texts are the next hop's own, sanitised to one line of at most
//     1000 bytes.
var Rules = []Rule{
	{"greeting", "220", "-", "-", "EHLO follows"},
	{"greeting", "4xx (421 included)", "as received", "temporary", "this address fails; the next address or MX host is tried; when all fail the recipients are deferred with the last temporary reply"},
	{"greeting", "5xx", "as received", "permanent", "this address fails; the next address or MX host is tried; only when every attempt failed permanently are the recipients bounced"},
	{"EHLO", "5xx", "-", "-", "HELO is sent instead (no extensions: no PIPELINING, 8BITMIME, SMTPUTF8, DSN, SIZE)"},
	{"EHLO", "4xx, or HELO refused", "as received", "as code", "this address fails, as for the greeting"},
	{"STARTTLS", "4xx/5xx except 421", "451 4.7.10 when TLS is required", "temporary", "opportunistic TLS continues in clear text; required TLS fails this address"},
	{"STARTTLS", "220, then the handshake fails", "451 4.7.5", "temporary", "opportunistic TLS reconnects in clear text; required TLS fails this address"},
	{"AUTH", "anything but 235", "451 4.7.8", "temporary", "this address fails: a wrong smarthost password never bounces mail"},
	{"MAIL", "421", "as received", "temporary", "the session ends; every recipient is deferred with the 421"},
	{"MAIL", "4xx", "as received", "temporary", "every recipient of the message is deferred; the session is reused"},
	{"MAIL", "5xx", "as received", "permanent", "every recipient of the message is bounced; the session is reused"},
	{"RCPT", "421", "as received", "temporary", "the session ends; recipients without a reply of their own are deferred with the 421"},
	{"RCPT", "4xx", "as received", "temporary", "that recipient is deferred"},
	{"RCPT", "552", "452, enhanced 5.x.y as 4.x.y (4.5.3 when none)", "temporary", "that recipient is deferred: RFC 5321 section 4.5.3.1.10 says a 552 to RCPT (too many recipients) is to be treated as 452"},
	{"RCPT", "5xx except 552", "as received", "permanent", "that recipient is bounced"},
	{"DATA", "421", "as received", "temporary", "the session ends; the accepted recipients are deferred"},
	{"DATA", "4xx/5xx", "as received", "as code", "every accepted recipient gets the reply; RSET"},
	{"end of data", "2xx", "as received", "success", "the accepted recipients are delivered; the event carries this reply"},
	{"end of data", "421", "as received", "temporary", "the session ends; the accepted recipients are deferred"},
	{"end of data", "4xx/5xx", "as received", "as code", "every accepted recipient gets the reply"},
	{"any", "a code of an unexpected class (say 250 to STARTTLS where a failure is reported, or 3xx)", "451 4.5.0", "temporary", "protocol error; the remote's reply is kept in the cause"},
	{"any", "malformed reply, lost connection, timeout", "451 4.4.2", "temporary", "the session ends; recipients without a reply of their own are deferred"},
	{"local", "cannot connect", "451 4.4.1", "temporary", "the next address is tried"},
	{"local", "DNS: temporary failure", "451 4.4.3", "temporary", "deferred"},
	{"local", "DNS: the domain does not exist or is no valid name", "550 5.1.2", "permanent", "bounced"},
	{"local", "DNS: null MX (RFC 7505)", "556 5.1.10", "permanent", "bounced"},
	{"local", "DNS: no MX and no address, or an MX host without address", "550 5.4.4", "permanent", "bounced (a relay host without address is 451 4.4.4: a broken smarthost setting must not bounce mail)"},
	{"local", "the best MX host is this node (RFC 5321 section 5.1)", "554 5.4.6", "permanent", "bounced: mail for the domain loops back to this node; MX hosts preferred over it are still used"},
	{"local", "TLS required, STARTTLS not offered", "451 4.7.10", "temporary", "the next address is tried"},
	{"local", "address with a control character or angle bracket", "553 5.1.7 (sender), 553 5.1.3 (recipient)", "permanent", "bounced, nothing sent"},
	{"local", "SMTPUTF8 needed (the message asked for it, or a non-ASCII address), the hop does not offer it", "553 5.6.7", "permanent", "bounced (RFC 6531 section 3.5: no downgrade); a non-ASCII recipient fails alone, the message's own need fails all"},
	{"local", "8-bit content, the hop does not offer 8BITMIME", "554 5.6.3", "permanent", "bounced (RFC 6152 section 3); Sluice does not convert to 7 bit, see docs/delivery.md"},
	{"local", "message larger than the hop's SIZE", "552 5.3.4", "permanent", "bounced, nothing sent"},
	{"local", "REQUIRETLS message (RFC 8689), the hop does not qualify: no TLS, certificate not verified, no validating policy, or no REQUIRETLS offered", "550 5.7.30 (550 5.7.10 when no TLS at all)", "permanent", "nothing sent to that host; the next address or MX host is tried; bounced when none qualifies, deferred while another failed temporarily (docs/delivery.md#requiretls-rfc-8689)"},
	{"local", "all addresses failed", "the chosen attempt's own: a permanent one only when every attempt failed permanently, else the last temporary one (4xx kept, e.g. 421)", "as code", "deferred or bounced"},
}

// classify turns a reply that reports a failure of cmd into the
// *pipeline.Error that Rules prescribes; its Cause is a *ReplyError with
// the reply as received.
func classify(r reply, cmd string, remote pipeline.Remote) *pipeline.Error {
	enh, text := r.split()
	cause := &ReplyError{Remote: remote, Command: cmd, Code: r.code, Enhanced: enh, Text: text}
	if r.code < 400 || r.code > 599 {
		return &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 5, 0},
			Message: fmt.Sprintf("unexpected reply to %s: %s", cmd, r.String()), Cause: cause}
	}
	if text == "" {
		text = cmd + " rejected"
	}
	code := r.code
	if enh == (pipeline.EnhancedCode{}) {
		enh = pipeline.EnhancedCode{code / 100, 0, 0}
	}
	if cmd == "RCPT" && code == 552 {
		// RFC 5321 section 4.5.3.1.10: treat as 452.
		code = 452
		if enh == (pipeline.EnhancedCode{5, 0, 0}) {
			enh = pipeline.EnhancedCode{4, 5, 3}
		} else {
			enh[0] = 4
		}
	}
	return &pipeline.Error{Code: code, Enhanced: enh, Message: text, Cause: cause}
}

// markdownRules renders Rules as the Markdown table of docs/delivery.md.
func markdownRules() string {
	var b strings.Builder
	b.WriteString("| phase | reply | recorded as | class | what happens |\n|---|---|---|---|---|\n")
	for _, r := range Rules {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", r.Phase, r.Reply, r.Recorded, r.Class, r.Effect)
	}
	return b.String()
}
