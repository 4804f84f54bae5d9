package delivery

import (
	"fmt"

	"github.com/sluice-mta/sluice/pipeline"
)

// REQUIRETLS (RFC 8689) on delivery.
//
// A message whose MailParams.RequireTLS is set (other than a report of
// our own, see below) is dialled with Egress.RequireTLS: Dial keeps a
// session only when the next hop qualifies (requireTLSRefusal is nil),
// otherwise that address fails with 550 5.7.30 "REQUIRETLS support
// required" (5.7.10 when there was no TLS at all) and the next address or
// MX host is tried. The usual summary
// then applies: when every attempt failed permanently (no host
// qualified) the recipients bounce with 5.7.30; when some failed
// temporarily (a host down, an MTA-STS certificate that did not verify,
// 4.7.5) they are deferred and retried, and bounce when they expire. So
// mail is never sent to a host that does not qualify, and a destination
// that plainly cannot qualify bounces at once (RFC 8689 section 4.2.1:
// "the message ... MUST NOT be sent to that host" and, when none is left,
// a non-delivery notification).
//
// A next hop qualifies when all of these hold:
//   - the session runs TLS;
//   - its certificate was verified (Remote.TLSValidated);
//   - a policy, not chance, asked for that verification: for an MX route,
//     an MTA-STS policy in enforce mode (Remote.TLSPolicy "mta-sts") or
//     DANE ("dane", where available): RFC 8689 section 4.2.1 wants the MX
//     host itself authenticated (DNSSEC or MTA-STS), which a verified
//     certificate for a name read from unauthenticated DNS does not do;
//     for a relay route (a host the operator named), tls "required" or
//     "verify" with the certificate verified for the relay's name;
//   - after STARTTLS the server advertised REQUIRETLS (RFC 8689 section
//     4.2.1), so the obligation travels on with the message.
//
// Deliver checks the same again (a reused session, a Dialer that did not
// get Egress.RequireTLS) and sends " REQUIRETLS" on MAIL FROM.
//
// The null sender: a non-delivery report this relay generated about a
// REQUIRETLS message (Envelope.OwnReport) carries RequireTLS too
// (internal/relay), and goes with REQUIRETLS to a
// next hop that qualifies; to one that does not it goes without, as RFC
// 8689 section 5 says such a report should not be discarded for that (it
// returns headers only: RET=FULL is ignored for REQUIRETLS messages).

// enhRequireTLS is RFC 8689 section 6's "REQUIRETLS support required".
var enhRequireTLS = pipeline.EnhancedCode{5, 7, 30}

// requireTLSRefusal says why this session's next hop may not receive a
// REQUIRETLS message, or nil when it may. See above. The codes are those
// RFC 8689 section 4.2.1 suggests: 5.7.10 "Encryption Needed" when no TLS
// session could be had, 5.7.30 "REQUIRETLS support required" otherwise.
func (s *Session) requireTLSRefusal() *pipeline.Error {
	r := s.remote
	var why string
	switch {
	case r.TLS == "":
		return &pipeline.Error{Code: 550, Enhanced: pipeline.EnhancedCode{5, 7, 10},
			Message: "REQUIRETLS: encryption needed, no TLS with " + r.Host}
	case !r.TLSValidated:
		why = "the certificate of " + r.Host + " was not verified"
	case !s.validatingPolicy():
		if s.routeKind == pipeline.RouteRelay {
			why = fmt.Sprintf("the relay route's TLS policy %q does not require a verified certificate (use \"required\" or \"verify\")", r.TLSPolicy)
		} else {
			why = "no MTA-STS policy in enforce mode or DANE authenticates MX host " + r.Host
		}
	default:
		if _, ok := s.ext["REQUIRETLS"]; ok {
			return nil
		}
		why = r.Host + " does not offer REQUIRETLS"
	}
	return &pipeline.Error{Code: 550, Enhanced: enhRequireTLS, Message: "REQUIRETLS support required: " + why}
}

// validatingPolicy reports whether the session's TLS policy made the
// certificate check a condition of the session (see requireTLSRefusal).
func (s *Session) validatingPolicy() bool {
	switch s.remote.TLSPolicy {
	case tlsMTASTS, tlsDANE:
		return true
	case pipeline.TLSRequired, pipeline.TLSVerify:
		return s.routeKind == pipeline.RouteRelay
	}
	return false
}

// requireTLSParam is what Deliver adds to MAIL FROM for env: " REQUIRETLS"
// when the message requires TLS and the session qualifies. A message with
// a sender that requires TLS over a session that does not qualify gets
// the refusal for every recipient; a report of our own (null sender,
// Envelope.OwnReport) goes without (see above).
func (s *Session) requireTLSParam(env *Envelope) (string, *pipeline.Error) {
	if !env.Params.RequireTLS {
		return "", nil
	}
	e := s.requireTLSRefusal()
	switch {
	case e == nil:
		return " REQUIRETLS", nil
	case env.From == "" && env.OwnReport:
		return "", nil
	}
	return "", e
}
