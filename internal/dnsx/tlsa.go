package dnsx

import (
	"context"
	"encoding/hex"
	"fmt"
	"strconv"

	"github.com/miekg/dns"
)

// TLSA is one TLSA record (RFC 6698 section 2.1): which certificate of a
// TLS server's chain it constrains (Usage), which part of it (Selector)
// and how Data is compared with that part (MatchingType).
type TLSA struct {
	// Usage: 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE (RFC 7218).
	Usage uint8
	// Selector: 0 the full certificate, 1 its SubjectPublicKeyInfo.
	Selector uint8
	// MatchingType: 0 the DER bytes themselves, 1 SHA-256, 2 SHA-512.
	MatchingType uint8
	// Data is the certificate association data, as bytes.
	Data []byte
}

// String is the record's presentation form, "3 1 1 0123abcd...".
func (t TLSA) String() string {
	return fmt.Sprintf("%d %d %d %x", t.Usage, t.Selector, t.MatchingType, t.Data)
}

// TLSAResolver is a Resolver that can also look up TLSA records. Client
// is one; DANE (RFC 7672) needs it, and Results whose Authenticated
// field is meaningful.
type TLSAResolver interface {
	Resolver
	// LookupTLSA returns the TLSA records of the TLS service at host
	// and TCP port: the name _PORT._tcp.HOST (RFC 6698 section 3), after
	// any CNAME the resolver follows. Records whose association data is
	// malformed are left out. Outcomes are those of the package
	// documentation.
	LookupTLSA(ctx context.Context, host string, port int) (Result[TLSA], error)
}

var _ TLSAResolver = (*Client)(nil)

// LookupTLSA implements TLSAResolver. Answers are cached per TTL like the
// other lookups.
func (c *Client) LookupTLSA(ctx context.Context, host string, port int) (Result[TLSA], error) {
	name, err := toASCII(host)
	if err != nil {
		return Result[TLSA]{}, err
	}
	if port <= 0 || port > 65535 {
		return Result[TLSA]{}, fmt.Errorf("%w: port %d", ErrInvalidName, port)
	}
	qname := "_" + strconv.Itoa(port) + "._tcp." + name
	if _, ok := dns.IsDomainName(qname); !ok || len(qname) > 255 {
		return Result[TLSA]{}, fmt.Errorf("%w: %q", ErrInvalidName, qname)
	}
	return lookup(ctx, c, qname, dns.TypeTLSA, func(rr dns.RR) (TLSA, bool) {
		t, ok := rr.(*dns.TLSA)
		if !ok {
			return TLSA{}, false
		}
		data, err := hex.DecodeString(t.Certificate)
		if err != nil {
			return TLSA{}, false
		}
		return TLSA{Usage: t.Usage, Selector: t.Selector, MatchingType: t.MatchingType, Data: data}, true
	})
}
