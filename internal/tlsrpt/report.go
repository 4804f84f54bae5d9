// Package tlsrpt implements SMTP TLS Reporting (RFC 8460) for the
// sending side and the receiving side of Sluice:
//
//   - Recorder counts the outcome of every TLS policy evaluation of a
//     delivery session (Session: one per connection attempt the
//     delivery.Dialer makes under a policy), per UTC day and policy
//     domain, bounded in memory and saved to a Store (the spool) so a
//     restart does not lose the day;
//   - Recorder.Report builds the day's aggregate report for a domain in
//     the RFC's JSON format (section 4);
//   - Sender looks up the domain's rua (the _smtp._tls TXT record,
//     section 3) and delivers the report: https: by POST (section 5.4),
//     mailto: as a multipart/report message through the relay (section
//     5.3);
//   - ParseMessage and Inspect read reports other MTAs send us, for the
//     tls_report event.
//
// Result types are RFC 8460 section 4.3's; ResultOf maps a TLS or
// certificate verification error to one.
package tlsrpt

import (
	"encoding/json"
	"fmt"
	"math"
	"time"
)

// Policy types (RFC 8460 section 4.4, "policy-type").
const (
	PolicySTS      = "sts"
	PolicyTLSA     = "tlsa"
	PolicyNotFound = "no-policy-found"
)

// Result types (RFC 8460 section 4.3).
const (
	// Negotiation failures (4.3.1).
	ResultSTARTTLSNotSupported = "starttls-not-supported"
	ResultCertHostMismatch     = "certificate-host-mismatch"
	ResultCertExpired          = "certificate-expired"
	ResultCertNotTrusted       = "certificate-not-trusted"
	ResultValidationFailure    = "validation-failure"
	// Policy failures, DANE (4.3.2.1).
	ResultTLSAInvalid   = "tlsa-invalid"
	ResultDNSSECInvalid = "dnssec-invalid"
	ResultDANERequired  = "dane-required"
	// Policy failures, MTA-STS (4.3.2.2).
	ResultSTSPolicyFetchError = "sts-policy-fetch-error"
	ResultSTSPolicyInvalid    = "sts-policy-invalid"
	ResultSTSWebPKIInvalid    = "sts-webpki-invalid"
)

// MediaType is the media type of a gzip-compressed report (section
// 5.3, 6.4); MediaTypeJSON of an uncompressed one.
const (
	MediaType     = "application/tlsrpt+gzip"
	MediaTypeJSON = "application/tlsrpt+json"
)

// Report is an aggregate report (RFC 8460 section 4.4). Its JSON form is
// the RFC's.
type Report struct {
	OrganizationName string         `json:"organization-name"`
	DateRange        DateRange      `json:"date-range"`
	ContactInfo      string         `json:"contact-info"`
	ReportID         string         `json:"report-id"`
	Policies         []PolicyResult `json:"policies"`
}

// DateRange is the period a report covers; the ends are RFC 3339 times
// in UTC.
type DateRange struct {
	Start time.Time `json:"start-datetime"`
	End   time.Time `json:"end-datetime"`
}

// PolicyResult is one policy's entry in a report.
type PolicyResult struct {
	Policy         PolicyDesc      `json:"policy"`
	Summary        Summary         `json:"summary"`
	FailureDetails []FailureDetail `json:"failure-details,omitempty"`
}

// PolicyDesc names the policy that applied (section 4.4 "policy").
type PolicyDesc struct {
	Type   string   `json:"policy-type"`
	String []string `json:"policy-string,omitempty"`
	Domain string   `json:"policy-domain"`
	MXHost []string `json:"mx-host,omitempty"`
}

// Summary counts sessions (section 4.4 "summary").
type Summary struct {
	Successful int64 `json:"total-successful-session-count"`
	Failure    int64 `json:"total-failure-session-count"`
}

// FailureDetail is one kind of failure and how many sessions had it
// (section 4.4 "failure-details").
type FailureDetail struct {
	ResultType          string `json:"result-type"`
	SendingMTAIP        string `json:"sending-mta-ip,omitempty"`
	ReceivingMXHostname string `json:"receiving-mx-hostname,omitempty"`
	ReceivingMXHelo     string `json:"receiving-mx-helo,omitempty"`
	ReceivingIP         string `json:"receiving-ip,omitempty"`
	FailedSessionCount  int64  `json:"failed-session-count"`
	AdditionalInfo      string `json:"additional-information,omitempty"`
	FailureReasonCode   string `json:"failure-reason-code,omitempty"`
}

// Totals sums the summaries of every policy in r.
func (r *Report) Totals() Summary {
	var s Summary
	for _, p := range r.Policies {
		s.Successful = addSat(s.Successful, p.Summary.Successful)
		s.Failure = addSat(s.Failure, p.Summary.Failure)
	}
	return s
}

// addSat is a+b for non-negative counts, at most math.MaxInt64: a
// received report's counts are not ours to trust.
func addSat(a, b int64) int64 {
	if b > math.MaxInt64-a {
		return math.MaxInt64
	}
	return a + b
}

// Day is the UTC day d names ("2006-01-02"), as the start of the day.
func Day(d string) (time.Time, error) {
	t, err := time.Parse(time.DateOnly, d)
	if err != nil {
		return time.Time{}, fmt.Errorf("day %q: want YYYY-MM-DD", d)
	}
	return t, nil
}

// dayRange is the date-range of the UTC day that starts at t: the
// RFC's examples end a day at 23:59:59Z.
func dayRange(t time.Time) DateRange {
	t = t.UTC().Truncate(24 * time.Hour)
	return DateRange{Start: t, End: t.Add(24*time.Hour - time.Second)}
}

// Marshal is the report's JSON form, indented when indent.
func (r *Report) Marshal(indent bool) ([]byte, error) {
	if indent {
		return json.MarshalIndent(r, "", "  ")
	}
	return json.Marshal(r)
}
