package queue

import (
	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// tlsNeed is what a message asks of the TLS of its delivery (RFC 8689).
// Messages that ask something are queued apart from the others of their
// destination (their own connections), so a session opened for one kind
// never carries the other: a REQUIRETLS message must not ride on a session
// that was not checked for it, and a "TLS-Required: No" message must not
// relax the policy for the rest.
type tlsNeed uint8

const (
	tlsAny tlsNeed = iota
	// tlsRequired: REQUIRETLS (delivery.Egress.RequireTLS), except on a
	// DSN this relay generated (null sender, source "dsn") about a
	// REQUIRETLS message: it is sent
	// with REQUIRETLS where the hop qualifies, else without (see
	// internal/delivery/requiretls.go).
	tlsRequired
	// tlsOptional: "TLS-Required: No" without REQUIRETLS
	// (delivery.Egress.IgnoreTLSPolicy).
	tlsOptional
)

func tlsNeedOf(m *spool.Meta) tlsNeed {
	switch {
	case m.Params.RequireTLS && !(m.Sender == "" && m.Source == pipeline.SourceDSN):
		return tlsRequired
	case m.Params.TLSOptional && !m.Params.RequireTLS:
		return tlsOptional
	}
	return tlsAny
}

// key is the suffix of a destination's key.
func (n tlsNeed) key() string {
	switch n {
	case tlsRequired:
		return "|requiretls"
	case tlsOptional:
		return "|tls-optional"
	}
	return ""
}

// egress is the Egress a dial starts from.
func (n tlsNeed) egress() delivery.Egress {
	return delivery.Egress{RequireTLS: n == tlsRequired, IgnoreTLSPolicy: n == tlsOptional}
}
