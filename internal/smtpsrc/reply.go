package smtpsrc

import (
	"errors"

	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/internal/mailtext"
	"github.com/sluice-mta/sluice/pipeline"
)

// Replies this package produces itself.
var (
	errNUL = &pipeline.Error{Code: 554, Enhanced: pipeline.EnhancedCode{5, 6, 0},
		Message: "NUL characters in message data are not allowed"}
	errLineTooLong = &pipeline.Error{Code: 554, Enhanced: pipeline.EnhancedCode{5, 6, 0},
		Message: "Message has a line longer than the limit; fold or encode long lines"}
	errDataTimeout = &pipeline.Error{Code: 421, Enhanced: pipeline.EnhancedCode{4, 4, 2},
		Message: "Timeout while receiving message data, closing connection"}
	errShuttingDown = &pipeline.Error{Code: 421, Enhanced: pipeline.EnhancedCode{4, 3, 2},
		Message: "Service shutting down, try again later"}
	errBadSequence = &pipeline.Error{Code: 503, Enhanced: pipeline.EnhancedCode{5, 5, 1},
		Message: "Bad sequence of commands"}
	errTooManyConns = &pipeline.Error{Code: 421, Enhanced: pipeline.EnhancedCode{4, 3, 2},
		Message: "Too many connections, try again later"}
	errTooManyFromIP = &pipeline.Error{Code: 421, Enhanced: pipeline.EnhancedCode{4, 7, 0},
		Message: "Too many connections from your address, try again later"}
	errInflightFull = &pipeline.Error{Code: 452, Enhanced: pipeline.EnhancedCode{4, 3, 1},
		Message: "Too much mail in progress, try again later"}
	// X.4.6 "routing loop detected" (RFC 3463); Postfix says 5.4.0.
	errTooManyHops = &pipeline.Error{Code: 554, Enhanced: pipeline.EnhancedCode{5, 4, 6},
		Message: "Too many hops (Received fields): mail loop?"}
	errNeedSMTPUTF8 = &pipeline.Error{Code: 553, Enhanced: pipeline.EnhancedCode{5, 6, 7},
		Message: "Non-ASCII address needs the SMTPUTF8 parameter"}
	errPoisoned = &pipeline.Error{Code: 550, Enhanced: pipeline.EnhancedCode{5, 6, 0}, // MAIL may answer 550, not 554
		Message: "No more mail on this connection after malformed message data"}
)

// maxReplyText bounds a reply's text so the whole line stays well under
// RFC 5321's 512-octet reply-line limit.
const maxReplyText = 400

// smtpError is the one boundary that turns any error into the reply a
// client sees. It builds on pipeline.Reply (an *pipeline.Error passes
// through without its cause, a deadline becomes 451 4.4.5, anything else
// 451 4.3.0 with a generic text) and additionally guarantees a well-formed
// reply: the code is 4xx or 5xx (anything else is a programming error and
// becomes the generic internal error), the enhanced code's class matches
// the code, and the text is one line of printable characters.
func smtpError(err error) *smtp.SMTPError {
	if err == nil {
		err = errors.New("smtpsrc: smtpError(nil)")
	}
	r := pipeline.Reply(err)
	if r.Code < 400 || r.Code > 599 {
		r = pipeline.Reply(pipeline.ErrInternal)
	}
	enh := r.Enhanced
	if enh[0] != r.Code/100 {
		enh = pipeline.EnhancedCode{r.Code / 100, 0, 0}
	}
	text := cleanText(r.Message)
	if text == "" {
		if r.Code >= 500 {
			text = "Transaction failed"
		} else {
			text = "Temporary failure, try again later"
		}
	}
	return &smtp.SMTPError{Code: r.Code, EnhancedCode: smtp.EnhancedCode(enh), Message: text}
}

// cleanText makes a stage-provided text safe for one reply line.
func cleanText(s string) string { return mailtext.OneLine(s, maxReplyText) }

// okReply is the 250 answer to DATA/BDAT LAST. go-smtp writes any
// *SMTPError returned by Session.Data verbatim, which lets us name the
// message id in the reply.
func okReply(id string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK: queued as " + id}
}
