package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// EnhancedCode is an RFC 3463 enhanced status code such as {5, 7, 1}.
type EnhancedCode [3]int

// String formats the code as "5.7.1"; the zero value formats as "".
func (c EnhancedCode) String() string {
	if c == (EnhancedCode{}) {
		return ""
	}
	return fmt.Sprintf("%d.%d.%d", c[0], c[1], c[2])
}

// ParseEnhancedCode parses "5.7.1". The class must be 2, 4 or 5.
func ParseEnhancedCode(s string) (EnhancedCode, error) {
	var c EnhancedCode
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return c, fmt.Errorf("enhanced code %q: want three numbers like 5.7.1", s)
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 999 {
			return c, fmt.Errorf("enhanced code %q: %q is not a number from 0 to 999", s, p)
		}
		c[i] = n
	}
	if c[0] != 2 && c[0] != 4 && c[0] != 5 {
		return c, fmt.Errorf("enhanced code %q: class must be 2, 4 or 5", s)
	}
	return c, nil
}

// Error is the one error type that carries an SMTP reply. Stages, sources and
// delivery return it where the reply matters; Reply turns any error into one.
//
// Message is safe to show a client. Cause is internal: it is logged, never
// sent. Temporary reports whether the failure is worth retrying; it is
// derived from Code (4xx) so the two cannot disagree.
type Error struct {
	Code     int          // SMTP reply code, 4xx or 5xx
	Enhanced EnhancedCode // RFC 3463 code; zero means "derive from Code"
	Message  string       // client-safe text
	Cause    error        // internal cause, for logs only
	Stage    string       // stage that produced it, for logs and events
	// RetryAfter is, for a 4xx, when the client may try again (from
	// Verdict.RetryAfter); 0 = not known. Reply keeps it.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%d %s %s", e.Code, e.EnhancedOrDefault(), e.Message)
	if e.Stage != "" {
		s = "stage " + e.Stage + ": " + s
	}
	if e.Cause != nil {
		s += ": " + e.Cause.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Cause }

// Temporary reports whether the reply is a 4xx.
func (e *Error) Temporary() bool { return e.Code >= 400 && e.Code < 500 }

// EnhancedOrDefault returns Enhanced, or X.0.0 with the class of Code.
func (e *Error) EnhancedOrDefault() EnhancedCode {
	if e.Enhanced != (EnhancedCode{}) {
		return e.Enhanced
	}
	return EnhancedCode{e.Code / 100, 0, 0}
}

// Errorf builds an *Error with a client-safe message.
func Errorf(code int, enh EnhancedCode, format string, args ...any) *Error {
	return &Error{Code: code, Enhanced: enh, Message: fmt.Sprintf(format, args...)}
}

// Common replies.
var (
	ErrRelayDenied    = &Error{Code: 550, Enhanced: EnhancedCode{5, 7, 1}, Message: "Relay access denied"} // RFC 5321 4.3.2: RCPT may answer 550, not 554
	ErrTooManyRcpts   = &Error{Code: 452, Enhanced: EnhancedCode{4, 5, 3}, Message: "Too many recipients"}
	ErrTooBig         = &Error{Code: 552, Enhanced: EnhancedCode{5, 3, 4}, Message: "Message size exceeds the limit"}
	ErrStageTimeout   = &Error{Code: 451, Enhanced: EnhancedCode{4, 4, 5}, Message: "Policy check timed out, try again later"}
	ErrInternal       = &Error{Code: 451, Enhanced: EnhancedCode{4, 3, 0}, Message: "Internal error, try again later"}
	ErrSpoolFull      = &Error{Code: 452, Enhanced: EnhancedCode{4, 3, 1}, Message: "Insufficient system storage, try again later"}
	ErrBadSyntax      = &Error{Code: 501, Enhanced: EnhancedCode{5, 5, 4}, Message: "Syntax error in address"}
	ErrBareLineEnding = &Error{Code: 554, Enhanced: EnhancedCode{5, 6, 0}, Message: "Bare CR or LF in message data is not allowed; use CRLF line endings"}
)

// Reply is the single boundary that turns any error into the reply a client
// sees. An *Error passes through (with its cause dropped); a context deadline
// becomes 451 4.4.5; anything else becomes a generic 451 4.3.0, so internals
// never leak. A nil error yields the zero Reply.
func Reply(err error) Error {
	if err == nil {
		return Error{}
	}
	var e *Error
	if errors.As(err, &e) {
		return Error{Code: e.Code, Enhanced: e.EnhancedOrDefault(), Message: e.Message, RetryAfter: e.RetryAfter}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return Error{Code: ErrStageTimeout.Code, Enhanced: ErrStageTimeout.Enhanced, Message: ErrStageTimeout.Message}
	}
	return Error{Code: ErrInternal.Code, Enhanced: ErrInternal.Enhanced, Message: ErrInternal.Message}
}

// IsTemporary classifies an error for the queue: an *Error by its code, a
// deadline as temporary, and anything unknown as temporary too (a retry is
// cheaper than a wrong bounce).
func IsTemporary(err error) bool {
	var e *Error
	if errors.As(err, &e) {
		return e.Temporary()
	}
	return true
}
