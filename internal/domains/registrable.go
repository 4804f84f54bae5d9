package domains

import (
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/net/publicsuffix"

	"github.com/sluice-mta/sluice/internal/dkim"
)

// NotRegistrableError is Registry.Add's answer for a name that is not a
// tenant's sending domain; Why says what it is instead (the HTTP API
// answers 400 naming the domain field).
type NotRegistrableError struct{ Why string }

func (e *NotRegistrableError) Error() string { return e.Why }

// SetNodeNames sets the node's own host names (sluice.hostname): Add
// refuses to register them. Set it before the registry serves.
func (r *Registry) SetNodeNames(names ...string) {
	own := make([]string, 0, len(names))
	for _, n := range names {
		if n = dkim.NormalizeDomain(n); n != "" {
			own = append(own, n)
		}
	}
	r.nodeNames.Store(&own)
}

// Registrable reports why domain (normalised, dkim.NormalizeDomain) cannot
// be a tenant's sending domain, nil when it can: an IP address literal
// (with or without brackets), a public suffix (a TLD such as com or
// co.uk, or a private suffix such as github.io: publicsuffix.org's list,
// as compiled into golang.org/x/net/publicsuffix), one of the node's own
// host names (SetNodeNames), or the DNS listener's zone or a name under
// it (sluice.dns_server.zone: the keys Sluice serves live there).
func (r *Registry) Registrable(domain string) error {
	bare := strings.TrimSuffix(strings.TrimPrefix(domain, "["), "]")
	if _, err := netip.ParseAddr(strings.TrimPrefix(bare, "IPv6:")); err == nil {
		return &NotRegistrableError{fmt.Sprintf("%s is an IP address; register a domain name", domain)}
	}
	if ps, _ := publicsuffix.PublicSuffix(domain); ps == domain {
		return &NotRegistrableError{fmt.Sprintf("%s is a public suffix (publicsuffix.org), shared by many owners; register your own domain under it", domain)}
	}
	if own := r.nodeNames.Load(); own != nil {
		for _, n := range *own {
			if domain == n {
				return &NotRegistrableError{fmt.Sprintf("%s is this relay's own host name", domain)}
			}
		}
	}
	if dl := r.deleg.Load(); dl != nil {
		if z := dkim.NormalizeDomain(dl.Zone); domain == z || strings.HasSuffix(domain, "."+z) {
			return &NotRegistrableError{fmt.Sprintf("%s is in this relay's DNS listener zone %s (sluice.dns_server.zone)", domain, z)}
		}
	}
	return nil
}
