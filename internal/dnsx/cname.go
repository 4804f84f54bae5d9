package dnsx

import (
	"context"
	"strings"

	"github.com/miekg/dns"
)

// CNAMEResolver is a Resolver that can also return the CNAME record at a
// name (Client implements it). Callers type-assert for it.
type CNAMEResolver interface {
	LookupCNAME(ctx context.Context, name string) (Result[string], error)
}

// LookupCNAME returns the target of the CNAME record at name (lower case,
// without the trailing dot): the alias itself, not the end of the chain.
// A name without a CNAME is ErrNoData (it may have other records) or
// ErrNotFound, as for the other lookups. Cached like them.
func (c *Client) LookupCNAME(ctx context.Context, name string) (Result[string], error) {
	qname, err := toASCII(name)
	if err != nil {
		return Result[string]{}, err
	}
	return lookup(ctx, c, qname, dns.TypeCNAME, func(rr dns.RR) (string, bool) {
		cn, ok := rr.(*dns.CNAME)
		if !ok || !strings.EqualFold(cn.Hdr.Name, qname) {
			return "", false
		}
		return strings.TrimSuffix(strings.ToLower(cn.Target), "."), true
	})
}
