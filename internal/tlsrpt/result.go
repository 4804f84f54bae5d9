package tlsrpt

import (
	"crypto/x509"
	"errors"
	"strings"
)

// ResultOf maps a certificate verification or TLS handshake error to an
// RFC 8460 result type: a certificate for other names is
// certificate-host-mismatch, an expired (or not yet valid) one
// certificate-expired, one from an unknown authority
// certificate-not-trusted, anything else validation-failure.
func ResultOf(err error) string {
	var (
		host    x509.HostnameError
		unknown x509.UnknownAuthorityError
		invalid x509.CertificateInvalidError
	)
	switch {
	case errors.As(err, &host):
		return ResultCertHostMismatch
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return ResultCertExpired
	case errors.As(err, &unknown):
		return ResultCertNotTrusted
	}
	return ResultValidationFailure
}

// FetchResult maps the error of an MTA-STS policy lookup (mtasts.Cache.Get)
// to a result type: a certificate problem of the policy host is
// sts-webpki-invalid, an unparsable policy or TXT record
// sts-policy-invalid, anything else (HTTP status, timeout, DNS)
// sts-policy-fetch-error.
func FetchResult(err error) string {
	var invalid x509.CertificateInvalidError
	switch {
	case ResultOf(err) != ResultValidationFailure, errors.As(err, &invalid):
		return ResultSTSWebPKIInvalid
	case strings.HasPrefix(err.Error(), "mta-sts policy:"), strings.HasPrefix(err.Error(), "mta-sts TXT record:"):
		return ResultSTSPolicyInvalid
	}
	return ResultSTSPolicyFetchError
}
