package pipeline

import "time"

// Action is what a stage decided at a hook point.
type Action int

const (
	// Continue: no decision; the next stage runs. The zero Verdict.
	Continue Action = iota
	// Accept: stop this hook point successfully. At on_rcpt it also
	// authorises relay for the recipient; at on_route it carries a Route.
	Accept
	// Reject: permanent failure (5xx SMTP, HTTP 422).
	Reject
	// Tempfail: temporary failure (4xx SMTP, HTTP 429/503).
	Tempfail
	// Discard: accept the message and drop it, with a "discarded" event.
	Discard
)

func (a Action) String() string {
	switch a {
	case Continue:
		return "continue"
	case Accept:
		return "accept"
	case Reject:
		return "reject"
	case Tempfail:
		return "tempfail"
	case Discard:
		return "discard"
	}
	return "unknown"
}

// Verdict is a stage's answer at one hook point.
type Verdict struct {
	Action   Action
	Code     int          // Reject/Tempfail: SMTP code; 0 = 550 / 451
	Enhanced EnhancedCode // Reject/Tempfail: zero = 5.7.1 / 4.7.1
	Text     string       // Reject/Tempfail: client-visible text; Discard: reason
	Route    *Route       // on_route Accept: where the recipient goes
	// RetryAfter is, for Tempfail, when the client may try again (a rate
	// limit's refill time); 0 = not known. HTTP sends it as Retry-After
	// (whole seconds, rounded up); SMTP has no field for it.
	RetryAfter time.Duration
	// Edits are applied by the chain after the stage returns Continue,
	// Accept or Discard (see Edits for which hook may make which edit).
	Edits Edits
}

// Convenience constructors.
func AcceptVerdict() Verdict               { return Verdict{Action: Accept} }
func RouteVerdict(r *Route) Verdict        { return Verdict{Action: Accept, Route: r} }
func DiscardVerdict(reason string) Verdict { return Verdict{Action: Discard, Text: reason} }
func RejectVerdict(code int, enh EnhancedCode, text string) Verdict {
	return Verdict{Action: Reject, Code: code, Enhanced: enh, Text: text}
}
func TempfailVerdict(code int, enh EnhancedCode, text string) Verdict {
	return Verdict{Action: Tempfail, Code: code, Enhanced: enh, Text: text}
}

// Err turns a Reject or Tempfail verdict into an *Error, filling defaults
// and forcing the code into the right class (a "tempfail" with a 5xx code
// is still a 4xx). It returns nil for other actions.
func (v Verdict) Err(stage string) *Error {
	switch v.Action {
	case Reject:
		e := &Error{Code: v.Code, Enhanced: v.Enhanced, Message: v.Text, Stage: stage}
		if e.Code < 500 || e.Code > 599 {
			e.Code = 550
		}
		if e.Enhanced == (EnhancedCode{}) || e.Enhanced[0] != 5 {
			e.Enhanced = EnhancedCode{5, 7, 1}
		}
		if e.Message == "" {
			e.Message = "Rejected by policy"
		}
		return e
	case Tempfail:
		e := &Error{Code: v.Code, Enhanced: v.Enhanced, Message: v.Text, Stage: stage, RetryAfter: v.RetryAfter}
		if e.Code < 400 || e.Code > 499 {
			e.Code = 451
		}
		if e.Enhanced == (EnhancedCode{}) || e.Enhanced[0] != 4 {
			e.Enhanced = EnhancedCode{4, 7, 1}
		}
		if e.Message == "" {
			e.Message = "Temporarily rejected by policy, try again later"
		}
		return e
	}
	return nil
}
