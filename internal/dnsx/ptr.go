package dnsx

import (
	"context"
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// LookupPTR returns the names of ip's PTR records (RFC 1035 section
// 3.5), lower-case without the trailing dot, with the outcomes of the
// package documentation. SPF's ptr mechanism and %{p} macro (RFC 7208
// section 5.5) are its users; it is not part of Resolver, so fakes need
// not implement it.
func (c *Client) LookupPTR(ctx context.Context, ip netip.Addr) (Result[string], error) {
	name, err := dns.ReverseAddr(ip.Unmap().String())
	if err != nil {
		return Result[string]{}, ErrInvalidName
	}
	return lookup(ctx, c, name, dns.TypePTR, func(rr dns.RR) (string, bool) {
		p, ok := rr.(*dns.PTR)
		if !ok {
			return "", false
		}
		return strings.TrimSuffix(strings.ToLower(p.Ptr), "."), true
	})
}
