package config

import (
	"net"
	"net/netip"
)

// DANEWarning says why the DNSSEC answers that sluice.delivery{ dane =
// true } trusts may be forged: DANE believes the AD bit of Resolver's
// answers (package dnsx, "DNSSEC"), which only a validating resolver on
// a path nobody can spoof (loopback) makes safe. It is "" when dane is
// off or Resolver is a loopback address. `sluice check` prints it and
// serve logs it at Warn.
func (d *Delivery) DANEWarning() string {
	if !d.DANE {
		return ""
	}
	if d.Resolver == "" {
		return "sluice.delivery: dane = true trusts the AD bit of the first nameserver of /etc/resolv.conf; set resolver to a validating resolver on loopback (127.0.0.1:53)"
	}
	host, _, err := net.SplitHostPort(d.Resolver)
	if ip, perr := netip.ParseAddr(host); err == nil && perr == nil && ip.IsLoopback() {
		return ""
	}
	return "sluice.delivery: dane = true trusts the AD bit of resolver " + d.Resolver + ", which is not on loopback: whoever can spoof its answers can forge DNSSEC validation and bypass MTA-STS; use a validating resolver on this host"
}
