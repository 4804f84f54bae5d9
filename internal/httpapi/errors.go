package httpapi

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/sluice-mta/sluice/internal/relay"
	"github.com/sluice-mta/sluice/pipeline"
)

// Error codes in {"error": {"code": ...}}. They are part of the API: never
// renamed, new ones may be added.
const (
	codeInvalidJSON       = "invalid_json"           // 400: not JSON, or trailing data
	codeUnknownField      = "unknown_field"          // 400: a field the API does not know
	codeInvalidField      = "invalid_field"          // 400: a field's value is wrong (see "field")
	codeMissingField      = "missing_field"          // 400: a required field is absent
	codeUnauthorized      = "unauthorized"           // 401: missing, malformed, unknown or revoked key
	codeForbidden         = "forbidden"              // 403: the key lacks the scope
	codeSenderNotAllowed  = "sender_not_allowed"     // 403: from domain not allowed for the key
	codeNotFound          = "not_found"              // 404
	codeMethodNotAllowed  = "method_not_allowed"     // 405
	codeConflict          = "conflict"               // 409: the resource exists already
	codeRequestTimeout    = "request_timeout"        // 408: the body was not read in time
	codeWaitTimeout       = "wait_timeout"           // 408: no sandbox message matched in time
	codeTooLarge          = "request_too_large"      // 413
	codeUnsupportedType   = "unsupported_media_type" // 415
	codeRejected          = "rejected"               // 422: a stage refused (SMTP 5xx)
	codeIdempotencyReused = "idempotency_key_reused" // 422: same key, different request
	codeTempfail          = "tempfail"               // 429: a stage refused for now (SMTP 4xx)
	codeUnavailable       = "unavailable"            // 503: cannot store mail now (SMTP 4.3.x)
	codeOutcomeUnknown    = "outcome_unknown"        // 503: batch item lost in a crash window
	codeInternal          = "internal"               // 500
)

// Retry-After values, in seconds.
const (
	retryAfterTempfail    = 5
	retryAfterUnavailable = 5
)

// apiError is an error answer. Its JSON form is the object under "error".
type apiError struct {
	Status   int    `json:"-"`
	Code     string `json:"code"`
	Message  string `json:"message"`
	Field    string `json:"field,omitempty"`
	SMTPCode int    `json:"smtp_code,omitempty"`
	Enhanced string `json:"enhanced,omitempty"`
	Stage    string `json:"-"` // for logs only
	// Retry is the Retry-After a stage asked for (a rate limit's refill
	// time, pipeline.Verdict.RetryAfter); 0: the default for the status.
	Retry time.Duration `json:"-"`
}

func (e *apiError) Error() string {
	s := strconv.Itoa(e.Status) + " " + e.Code + ": " + e.Message
	if e.Field != "" {
		s += " (field " + e.Field + ")"
	}
	return s
}

// retryAfter is the Retry-After header value for the error, or "".
func (e *apiError) retryAfter() string {
	switch e.Status {
	case http.StatusTooManyRequests:
		if e.Retry > 0 {
			// Whole seconds, rounded up (RFC 9110 section 10.2.3): a
			// client that retries after 0.3 s rounded down would be
			// refused again.
			return strconv.FormatInt(int64((e.Retry+time.Second-1)/time.Second), 10)
		}
		return strconv.Itoa(retryAfterTempfail)
	case http.StatusServiceUnavailable, http.StatusInsufficientStorage:
		return strconv.Itoa(retryAfterUnavailable)
	}
	return ""
}

func errf(status int, code, field, format string, args ...any) *apiError {
	return &apiError{Status: status, Code: code, Field: field, Message: fmt.Sprintf(format, args...)}
}

// badField is a 400 naming the field.
func badField(field, format string, args ...any) *apiError {
	return errf(http.StatusBadRequest, codeInvalidField, field, format, args...)
}

func missingField(field string) *apiError {
	return errf(http.StatusBadRequest, codeMissingField, field, "%s is required", field)
}

var (
	errUnauthorized = errf(http.StatusUnauthorized, codeUnauthorized, "", "a valid API key is required: Authorization: Bearer sk_...")
	errNotFound     = errf(http.StatusNotFound, codeNotFound, "", "not found")
	errInternal     = errf(http.StatusInternalServerError, codeInternal, "", "internal error")
)

// fromPipeline maps any error of the pipeline or the relay to an answer,
// through pipeline.Reply so that internal causes never leak:
//
//	5xx            → 422 rejected
//	452 4.3.1      → 507 unavailable (the spool's disk is full)
//	4xx, x.3.x     → 503 unavailable (the spool cannot take mail now)
//	other 4xx      → 429 tempfail
//
// Both 4xx classes carry Retry-After: for a 429, the stage's
// Verdict.RetryAfter when it gave one (a rate limit), else 5 seconds.
func fromPipeline(err error) *apiError {
	r := pipeline.Reply(err)
	e := &apiError{SMTPCode: r.Code, Enhanced: r.Enhanced.String(), Message: r.Message, Retry: r.RetryAfter}
	var pe *pipeline.Error
	if errors.As(err, &pe) {
		e.Stage = pe.Stage
	}
	var se *relay.SenderError
	switch {
	case errors.As(err, &se):
		// The relay's sender rule (a stage changed the sender, or a
		// composed From): 403 naming the field.
		e.Status, e.Code, e.Field = http.StatusForbidden, codeSenderNotAllowed, "from"
		if se.Field == relay.FieldFrom {
			e.Field = "message"
		}
	case r.Code >= 500:
		e.Status, e.Code = http.StatusUnprocessableEntity, codeRejected
	case r.Code == 452 && r.Enhanced == pipeline.ErrSpoolFull.Enhanced:
		e.Status, e.Code = http.StatusInsufficientStorage, codeUnavailable
	case r.Enhanced[1] == 3:
		e.Status, e.Code = http.StatusServiceUnavailable, codeUnavailable
	default:
		e.Status, e.Code = http.StatusTooManyRequests, codeTempfail
	}
	return e
}

// fromConnect maps a refusal at on_connect or on_auth: a permanent one is
// 403 (401 for 535, "credentials invalid"); a temporary one is mapped as
// any other.
func fromAccess(err error) *apiError {
	e := fromPipeline(err)
	if e.SMTPCode >= 500 {
		e.Status, e.Code = http.StatusForbidden, codeForbidden
		if e.SMTPCode == 535 {
			e.Status, e.Code = http.StatusUnauthorized, codeUnauthorized
		}
	}
	return e
}
