package delivery

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/tlsrpt"
	"github.com/sluice-mta/sluice/pipeline"
)

// tlsDANE is the policy of an attempt to an MX host with DNSSEC-
// authenticated TLSA records (RFC 7672): STARTTLS required, the
// certificate matched against the records.
const tlsDANE = "dane"

// daneState is what DNSSEC says about one MX host (RFC 7672 section 2.2).
type daneState struct {
	// tlsa are the usable records (DANE-TA and DANE-EE, selectors 0
	// and 1, matching types 0 to 2); empty with unusable set means
	// records exist but none can be used: TLS is then mandatory without
	// authentication (RFC 7672 section 2.2).
	tlsa     []dnsx.TLSA
	unusable bool
}

// usableTLSA keeps the records RFC 7672 section 3.1 lets SMTP use:
// DANE-TA(2) and DANE-EE(3); PKIX-TA(0) and PKIX-EE(1) are unusable
// (section 3.1.3), as are unknown selectors and matching types, and
// malformed records: a SHA-256 (SHA-512) digest that is not 32 (64)
// bytes long (RFC 6698 section 2.1.3), empty full data. Such a record
// can match no certificate; counted as usable, it alone would defer the
// domain's mail for good (Postfix, too, treats it as unusable).
func usableTLSA(rs []dnsx.TLSA) []dnsx.TLSA {
	var out []dnsx.TLSA
	for _, r := range rs {
		if (r.Usage == 2 || r.Usage == 3) && r.Selector <= 1 && wellFormedTLSA(r) {
			out = append(out, r)
		}
	}
	return out
}

// wellFormedTLSA reports whether r's data fits its matching type.
func wellFormedTLSA(r dnsx.TLSA) bool {
	switch r.MatchingType {
	case 0:
		return len(r.Data) > 0
	case 1:
		return len(r.Data) == sha256.Size
	case 2:
		return len(r.Data) == sha512.Size
	}
	return false
}

// LookupDANE returns the DANE state of an MX host reached at port: the
// records when the host's TLSA RRset is authenticated (nil, nil when
// DANE does not apply: no records, or an answer that is not
// authenticated). The caller has checked that the MX RRset and the
// host's addresses were authenticated (RFC 7672 section 2.2). A failed
// lookup is an error: for a host whose addresses are secure an attacker
// may be hiding its records, so the host is not used (RFC 7672 section
// 2.1.1).
func lookupDANE(ctx context.Context, r dnsx.TLSAResolver, host string, port int) (*daneState, error) {
	res, err := r.LookupTLSA(ctx, host, port)
	switch {
	case dnsx.IsNoData(err) || dnsx.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, &tlsFailure{result: tlsrpt.ResultDNSSECInvalid, policy: tlsDANE, err: &pipeline.Error{Code: 451,
			Enhanced: pipeline.EnhancedCode{4, 7, 5}, Message: "DANE: TLSA lookup for " + host + " failed", Cause: err}}
	case !res.Authenticated:
		return nil, nil
	}
	st := &daneState{tlsa: usableTLSA(res.Records)}
	st.unusable = len(st.tlsa) == 0
	return st, nil
}

// daneMismatch is a certificate chain that no TLSA record matches.
type daneMismatch struct {
	host    string
	records []dnsx.TLSA
	// nameErr is set when a DANE-TA record matched but the chain did
	// not validate for the host name (or at all).
	nameErr error
}

func (e *daneMismatch) Error() string {
	if e.nameErr != nil {
		return fmt.Sprintf("certificate chains to a DANE-TA trust anchor but does not validate for %s: %v", e.host, e.nameErr)
	}
	rs := make([]string, len(e.records))
	for i, r := range e.records {
		rs[i] = r.String()
	}
	return fmt.Sprintf("certificate matches no TLSA record of %s (%s)", e.host, strings.Join(rs, ", "))
}

// verifyDANE checks a server's chain against usable TLSA records (RFC
// 7672 section 3.1): a DANE-EE(3) record matches the leaf certificate
// or its public key, without name or expiry checks (section 3.1.1); a
// DANE-TA(2) record matches a certificate the server sent, and the leaf
// must then validate up to it as a trust anchor, for host (section
// 3.2.2) and with the usual expiry checks. now is the time for those.
func verifyDANE(certs []*x509.Certificate, records []dnsx.TLSA, host string, now time.Time) error {
	if len(certs) == 0 {
		return &daneMismatch{host: host, records: records}
	}
	for _, r := range records {
		if r.Usage == 3 && tlsaMatches(r, certs[0]) {
			return nil
		}
	}
	var nameErr error
	for _, r := range records {
		if r.Usage != 2 {
			continue
		}
		for _, ta := range certs {
			if !tlsaMatches(r, ta) {
				continue
			}
			roots := x509.NewCertPool()
			roots.AddCert(ta)
			inter := x509.NewCertPool()
			for _, c := range certs[1:] {
				inter.AddCert(c)
			}
			_, err := certs[0].Verify(x509.VerifyOptions{DNSName: host, Roots: roots,
				Intermediates: inter, CurrentTime: now})
			if err == nil {
				return nil
			}
			nameErr = err
		}
	}
	return &daneMismatch{host: host, records: records, nameErr: nameErr}
}

// tlsaMatches reports whether record r matches certificate c.
func tlsaMatches(r dnsx.TLSA, c *x509.Certificate) bool {
	data := c.Raw
	if r.Selector == 1 {
		data = c.RawSubjectPublicKeyInfo
	}
	switch r.MatchingType {
	case 0:
		return bytes.Equal(data, r.Data)
	case 1:
		sum := sha256.Sum256(data)
		return bytes.Equal(sum[:], r.Data)
	case 2:
		sum := sha512.Sum512(data)
		return bytes.Equal(sum[:], r.Data)
	}
	return false
}

// daneTLS sets cfg up for DANE: crypto/tls's own verification is off and
// VerifyConnection matches the chain against st's records. With only
// unusable records, any certificate is accepted (TLS without
// authentication, RFC 7672 section 2.2).
func daneTLS(cfg *tls.Config, st *daneState, host string) {
	cfg.InsecureSkipVerify = true
	if st.unusable {
		return
	}
	now := cfg.Time
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		t := time.Now()
		if now != nil {
			t = now()
		}
		return verifyDANE(cs.PeerCertificates, st.tlsa, host, t)
	}
}

// tlsFailure is an attempt refused by a TLS policy: the reply, and the
// RFC 8460 result type that goes to pipeline.Remote.TLSFailure.
type tlsFailure struct {
	result, policy string
	host, ip       string
	err            *pipeline.Error
	// message: the refusal is about the message (its TLS-Required: No
	// under dane-or-mta-sts), not the next hop (see RefusesMessage).
	message bool
}

// RefusesMessage reports whether err, from Dial or DialFrom, refused the
// message rather than failed to reach a qualifying next hop: a
// dane-or-mta-sts route and a message with "TLS-Required: No" (550
// 5.7.1), refused before any connection. Such an error says nothing about
// the destination: the queue does not feed it to the shaping rules (a
// rule for a site's "550 5.7.1" blocklisting reply must not suspend the
// site for it).
func RefusesMessage(err error) bool {
	var f *tlsFailure
	return errors.As(err, &f) && f.message
}

func (f *tlsFailure) Error() string { return f.err.Error() }
func (f *tlsFailure) Unwrap() error { return f.err }

// tlsResult is the RFC 8460 result type (tlsrpt.Result*) of an attempt
// that failed under an enforcing TLS policy, from its error: "" when TLS
// was not the cause (a refused connection, a 421 greeting). Certificate
// verification errors are tlsrpt.ResultOf's.
func tlsResult(err error) string {
	var (
		dm       *daneMismatch
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		pe       *pipeline.Error
	)
	switch {
	case errors.As(err, &dm) && dm.nameErr != nil:
		return tlsResult(dm.nameErr)
	case errors.As(err, &dm):
		return tlsrpt.ResultTLSAInvalid
	case errors.As(err, &hostname), errors.As(err, &unknown), errors.As(err, &invalid):
		return tlsrpt.ResultOf(err)
	case !errors.As(err, &pe):
		return ""
	case pe.Enhanced == pipeline.EnhancedCode{4, 7, 10}:
		return tlsrpt.ResultSTARTTLSNotSupported
	case pe.Enhanced == pipeline.EnhancedCode{4, 7, 5}:
		return tlsrpt.ResultValidationFailure
	}
	return ""
}

// TLSRemote returns, for an error from Dial caused by a TLS policy (a
// DANE or MTA-STS check, or a verify or required route), the remote the
// last such failure happened at, with TLSPolicy and TLSFailure (RFC 8460
// result type) set; nil for any other error. The queue puts it in the
// deferral's event.
func TLSRemote(err error) *pipeline.Remote {
	var f *tlsFailure
	if !errors.As(err, &f) || f.host == "" {
		return nil
	}
	return &pipeline.Remote{Host: f.host, IP: f.ip, TLSPolicy: f.policy, TLSFailure: f.result}
}
