package delivery

import (
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/sluice-mta/sluice/internal/config"
)

// Self tells which MX hosts are this node, so that Dial never delivers a
// domain's mail back to itself (RFC 5321 section 5.1). A host is this
// node when its name is one of Names, or one of its addresses is in
// Prefixes, or it is an address this node accepts SMTP on at the port
// delivery connects to (Listen; an unspecified address such as 0.0.0.0
// stands for every address in Interfaces).
//
// Build it with NewSelf, or by hand in tests. It is read-only once set on
// a Dialer and safe for concurrent use.
type Self struct {
	Names      []string         // lower-case host names, without a trailing dot
	Prefixes   []netip.Prefix   // addresses that lead to this node, whatever the port
	Listen     []netip.AddrPort // the SMTP listeners' addresses
	Interfaces []netip.Addr     // the machine's addresses, for wildcard listeners
}

// NewSelf describes the node that cfg configures: its names (the delivery
// EHLO name, the node's host name, each SMTP listener's host name and
// sluice.delivery own_names), sluice.delivery own_addresses, the SMTP
// listeners' addresses, and the machine's interface addresses when a
// listener listens on all of them. A listener named by host name rather
// than address counts only for "localhost".
func NewSelf(cfg *config.Config) *Self {
	s := &Self{Prefixes: slices.Clone(cfg.Delivery.OwnAddresses)}
	addName := func(n string) {
		n = strings.ToLower(strings.TrimSuffix(n, "."))
		if n != "" && !slices.Contains(s.Names, n) {
			s.Names = append(s.Names, n)
		}
	}
	addName(cfg.Delivery.Hostname)
	addName(cfg.Hostname)
	for _, n := range cfg.Delivery.OwnNames {
		addName(n)
	}
	wildcard := false
	for _, l := range cfg.SMTP {
		addName(l.Hostname)
		host, portStr, err := net.SplitHostPort(l.Addr)
		port, perr := strconv.Atoi(portStr)
		if err != nil || perr != nil || port <= 0 {
			continue
		}
		var ips []netip.Addr
		switch ip, err := netip.ParseAddr(host); {
		case host == "":
			ips = []netip.Addr{netip.IPv6Unspecified()}
		case strings.EqualFold(host, "localhost"):
			ips = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()}
		case err == nil:
			ips = []netip.Addr{ip.Unmap()}
		}
		for _, ip := range ips {
			wildcard = wildcard || ip.IsUnspecified()
			s.Listen = append(s.Listen, netip.AddrPortFrom(ip, uint16(port)))
		}
	}
	if wildcard {
		if addrs, err := net.InterfaceAddrs(); err == nil {
			for _, a := range addrs {
				if p, err := netip.ParsePrefix(a.String()); err == nil {
					s.Interfaces = append(s.Interfaces, p.Addr().Unmap())
				}
			}
		}
	}
	return s
}

// IsName reports whether host is one of this node's names.
func (s *Self) IsName(host string) bool {
	if s == nil {
		return false
	}
	return slices.Contains(s.Names, strings.ToLower(strings.TrimSuffix(host, ".")))
}

// IsAddr reports whether connecting to ip at port reaches this node.
func (s *Self) IsAddr(ip netip.Addr, port int) bool {
	if s == nil {
		return false
	}
	ip = ip.Unmap()
	if ip.IsUnspecified() {
		return true // 0.0.0.0 and :: reach the local host
	}
	for _, p := range s.Prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	for _, l := range s.Listen {
		if int(l.Port()) != port {
			continue
		}
		if l.Addr() == ip {
			return true
		}
		// A wildcard listener answers on every interface address, and on
		// the whole loopback range (127.0.0.0/8 reaches the host on
		// Linux, not only the 127.0.0.1 an interface lists).
		if l.Addr().IsUnspecified() && (ip.IsLoopback() || slices.Contains(s.Interfaces, ip)) {
			return true
		}
	}
	return false
}
