package config

import (
	"net"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"
)

// DNSServer: sluice.dns_server { ... }. The authoritative DNS listener
// that serves the DKIM keys of sending domains under Zone, so customers
// publish CNAMEs to it once and Sluice rotates keys behind them
// (docs/rotation.md).
type DNSServer struct {
	// Listen is the UDP and TCP address, host:port (required).
	Listen string
	// Zone is the zone served, lower-case, without the trailing dot
	// (required): keys are at SELECTOR.DOMAIN-LABEL.Zone.
	Zone string
	// NS are the zone's name servers, published in its NS record set and
	// the SOA's MNAME (NS[0]); at least one, none inside Zone (the
	// listener serves no address records, so glue would be missing).
	NS []string
	// Hostmaster is the SOA RNAME as a mailbox name
	// (hostmaster.relay.example); default "hostmaster." + Zone.
	Hostmaster string
	// TTL of every record served, and the SOA MINIMUM (the negative TTL,
	// RFC 2308); default 5 minutes.
	TTL time.Duration
	// Selectors are the DKIM selectors each domain delegates with a CNAME
	// (SELECTOR._domainkey.DOMAIN CNAME SELECTOR.LABEL.Zone); rotation
	// moves the signing key from one to the next. Default s1, s2, s3.
	Selectors []string
}

// DKIMRotation: sluice.dkim_rotation { ... }. The schedule of DKIM key
// rotation for registered domains; it needs sluice.dns_server.
type DKIMRotation struct {
	// Every is how long a key signs before the next rotation starts
	// (from its activation); 0 rotates only on request. Default 90 days.
	Every time.Duration
	// Overlap is how long a replaced key stays published (retired) after
	// the new key became active, so mail signed just before still
	// verifies; then it is revoked (empty p=). Default 2 days.
	Overlap time.Duration
	// RemoveAfter is how long a revoked key is published with an empty
	// p= before it is dropped. Default 7 days.
	RemoveAfter time.Duration
	// CheckResolvers are the DNS servers (host:port) that must all return
	// a pending key before it becomes active; default the node's resolver
	// (sluice.delivery resolver, else /etc/resolv.conf's first).
	CheckResolvers []string
	// CheckEvery is how often the rotation job looks at every domain;
	// default 1 minute.
	CheckEvery time.Duration
}

// DefaultDKIMRotation returns the sluice.dkim_rotation defaults.
func DefaultDKIMRotation() DKIMRotation {
	return DKIMRotation{Every: 90 * 24 * time.Hour, Overlap: 48 * time.Hour, RemoveAfter: 7 * 24 * time.Hour, CheckEvery: time.Minute}
}

// DefaultSelectors are the delegated selectors when dns_server names none.
var DefaultSelectors = []string{"s1", "s2", "s3"}

// sluice.dns_server { listen = "0.0.0.0:53", zone = "dkim.relay.example", ns = { ... } }
func (ld *loader) dnsServer(L *lua.LState) int {
	const fn = "sluice.dns_server"
	ld.singleton(fn)
	o := ld.s.CheckOpts(1, fn, "listen", "zone", "ns", "hostmaster", "ttl", "selectors")
	d := &DNSServer{TTL: 5 * time.Minute, Selectors: DefaultSelectors}
	d.Listen = ld.listenAddr(o, "listen")
	if !o.String("zone", &d.Zone) || d.Zone == "" {
		o.Fail("zone", "is required (the zone this listener serves, e.g. \"dkim.relay.example\")")
	}
	d.Zone = strings.ToLower(strings.TrimSuffix(d.Zone, "."))
	if !validHostname(d.Zone) || !strings.Contains(d.Zone, ".") {
		o.Fail("zone", "%q is not a DNS name of at least two labels", d.Zone)
	}
	if !o.Strings("ns", &d.NS) || len(d.NS) == 0 {
		o.Fail("ns", "is required: the zone's name servers, as delegated by its parent (e.g. { \"ns1.relay.example\" })")
	}
	for i, n := range d.NS {
		n = strings.ToLower(strings.TrimSuffix(n, "."))
		if !validHostname(n) || !strings.Contains(n, ".") {
			o.Fail("ns", "%q is not a host name", n)
		}
		if n == d.Zone || strings.HasSuffix(n, "."+d.Zone) {
			o.Fail("ns", "%q is inside the zone %s: the listener serves no address records (glue); use a name outside it", n, d.Zone)
		}
		d.NS[i] = n
	}
	d.Hostmaster = "hostmaster." + d.Zone
	if o.String("hostmaster", &d.Hostmaster) {
		d.Hostmaster = strings.ToLower(strings.TrimSuffix(strings.Replace(d.Hostmaster, "@", ".", 1), "."))
		if !validHostname(d.Hostmaster) {
			o.Fail("hostmaster", "%q is not a mailbox name such as hostmaster.relay.example", d.Hostmaster)
		}
	}
	ld.duration(o, "ttl", &d.TTL)
	if d.TTL < time.Second || d.TTL > 7*24*time.Hour {
		o.Fail("ttl", "must be from 1s to 7d, got %s", d.TTL)
	}
	if o.Strings("selectors", &d.Selectors) {
		if len(d.Selectors) < 2 {
			o.Fail("selectors", "needs at least two selectors, so a rotation has one to move to")
		}
		seen := map[string]bool{}
		for i, s := range d.Selectors {
			s = strings.ToLower(s)
			if s == "" || len(s) > 63 || strings.ContainsFunc(s, func(c rune) bool {
				return !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-')
			}) {
				o.Fail("selectors", "%q is not a DNS label (letters, digits, '-')", s)
			}
			if seen[s] {
				o.Fail("selectors", "%q is given twice", s)
			}
			seen[s] = true
			d.Selectors[i] = s
		}
	}
	ld.cfg.DNSServer = d
	return 0
}

// sluice.dkim_rotation { every = "90d", overlap = "2d", check_resolvers = { ... } }
func (ld *loader) dkimRotation(L *lua.LState) int {
	const fn = "sluice.dkim_rotation"
	ld.singleton(fn)
	o := ld.s.CheckOpts(1, fn, "every", "overlap", "remove_after", "check_resolvers", "check_every")
	r := &ld.cfg.DKIMRotation
	ld.durationOrZero(o, "every", &r.Every)
	ld.duration(o, "overlap", &r.Overlap)
	ld.duration(o, "remove_after", &r.RemoveAfter)
	ld.duration(o, "check_every", &r.CheckEvery)
	if o.Strings("check_resolvers", &r.CheckResolvers) {
		for i, a := range r.CheckResolvers {
			if _, _, err := net.SplitHostPort(a); err != nil {
				if net.ParseIP(a) == nil && !validHostname(a) {
					o.Fail("check_resolvers", "%q is not host:port", a)
				}
				r.CheckResolvers[i] = net.JoinHostPort(a, "53")
			}
		}
	}
	ld.rotationLine = ld.s.Line()
	return 0
}
