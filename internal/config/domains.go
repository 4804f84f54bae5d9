package config

import (
	"net/netip"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"
)

// Domains: sluice.domains { ... }. What a sending domain must publish
// (docs/domains.md) and how registered domains are enforced.
type Domains struct {
	// SPFInclude is the name customers include in their SPF record
	// ("include:_spf.relay.example"); SPFIPs are this node's egress
	// addresses, published as ip4:/ip6: mechanisms. Neither set: the
	// sluice.egress sources' addresses (domains.PolicyOf), else no SPF
	// record is generated.
	SPFInclude string
	SPFIPs     []netip.Prefix
	// DMARC is the _dmarc TXT record proposed to a domain without one.
	// Default "v=DMARC1; p=none; adkim=r; aspf=r" (monitor first). A
	// domain that already publishes a DMARC record with a p= tag is
	// verified whatever its policy.
	DMARC string
	// ReturnPathMX, when set, asks each domain for an MX record at
	// ReturnPathLabel.DOMAIN pointing here, so bounces to the return-path
	// come back to this relay. ReturnPathLabel defaults to "bounces".
	ReturnPathLabel string
	ReturnPathMX    string
	// DKIMSelector and DKIMAlgo are the selector and algorithm of the key
	// generated for a registered domain; default "sluice" and "rsa"
	// (RSA-2048).
	DKIMSelector string
	DKIMAlgo     string
	// RequireVerified refuses a tenant's envelope sender (550 5.7.1, HTTP
	// 403) whose domain is registered but not verified, or, when the
	// tenant has registered domains, not registered at all. Default false.
	RequireVerified bool
	// CheckCache is how long a DNS check of a registered domain is reused
	// by GET /v1/domains/{d}; default 60s.
	CheckCache time.Duration
}

// DefaultDomains returns the sluice.domains defaults.
func DefaultDomains() Domains {
	return Domains{
		DMARC:           "v=DMARC1; p=none; adkim=r; aspf=r",
		ReturnPathLabel: "bounces",
		DKIMSelector:    "sluice",
		DKIMAlgo:        "rsa",
		CheckCache:      time.Minute,
	}
}

// sluice.domains { spf_include = "_spf.relay.example", dmarc = "...", ... }
func (ld *loader) domains(L *lua.LState) int {
	const fn = "sluice.domains"
	ld.singleton(fn)
	o := ld.s.CheckOpts(1, fn, "spf_include", "spf_ips", "dmarc", "return_path_label", "return_path_mx",
		"dkim_selector", "dkim_algo", "require_verified", "check_cache")
	d := &ld.cfg.Domains
	o.String("spf_include", &d.SPFInclude)
	var ips []string
	if o.Strings("spf_ips", &ips) {
		for _, s := range ips {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				a, aerr := netip.ParseAddr(s)
				if aerr != nil {
					o.Fail("spf_ips", "%q is not an IP address or prefix", s)
					continue
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			d.SPFIPs = append(d.SPFIPs, p)
		}
	}
	if o.String("dmarc", &d.DMARC) && !strings.HasPrefix(d.DMARC, "v=DMARC1;") {
		o.Fail("dmarc", "must start with \"v=DMARC1;\" (RFC 7489 section 6.4), got %q", d.DMARC)
	}
	o.String("return_path_label", &d.ReturnPathLabel)
	o.String("return_path_mx", &d.ReturnPathMX)
	o.String("dkim_selector", &d.DKIMSelector)
	if o.String("dkim_algo", &d.DKIMAlgo) && d.DKIMAlgo != "rsa" && d.DKIMAlgo != "ed25519" {
		o.Fail("dkim_algo", "want \"rsa\" or \"ed25519\", got %q", d.DKIMAlgo)
	}
	o.Bool("require_verified", &d.RequireVerified)
	ld.duration(o, "check_cache", &d.CheckCache)
	return 0
}
