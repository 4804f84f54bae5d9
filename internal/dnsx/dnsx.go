// Package dnsx puts the DNS lookups that outbound delivery needs (MX, A,
// AAAA) behind a small interface, Resolver, so tests can point delivery at a
// DNS server on loopback (see package dnstest) or inject a fake.
//
// The implementation, Client, talks to one configured recursive resolver
// over UDP, retries over TCP when an answer is truncated, and classifies
// every failure at the place it happens:
//
//   - NXDOMAIN is permanent: a *pipeline.Error 550 5.1.2 whose Cause is
//     ErrNotFound (use IsNotFound).
//   - SERVFAIL, REFUSED, any other rcode, timeouts and network errors are
//     temporary: a *pipeline.Error 451 4.4.3, so the queue defers.
//   - NOERROR without records of the asked type is not an error: LookupMX
//     returns an empty list (the caller falls back to the implicit MX,
//     RFC 5321 section 5.1) and LookupHost returns no addresses.
//
// Names are absolute (no search list). Internationalised names are converted
// to A-labels. Positive answers are cached for their TTL (capped at one
// hour); errors and empty answers are not cached.
//
// This package is not a general-purpose resolver: it does no DNSSEC
// validation, follows no CNAMEs itself (it relies on the recursive resolver
// to put the chain in the answer) and knows nothing of TXT records.
package dnsx

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/idna"

	"github.com/sluice-mta/sluice/pipeline"
)

// MX is one mail exchanger of a domain. Host is lower-case without the
// trailing dot; the root name of a null MX (RFC 7505) is kept as ".".
type MX struct {
	Host string
	Pref uint16
}

// Resolver is what delivery needs from DNS. Implementations must be safe
// for concurrent use. Errors should be *pipeline.Error values classified as
// described in the package documentation; delivery treats any other error
// as temporary.
type Resolver interface {
	// LookupMX returns the MX records of domain in the order the server
	// sent them (callers sort by preference). NOERROR without MX records
	// gives an empty list and a nil error.
	LookupMX(ctx context.Context, domain string) ([]MX, error)
	// LookupHost returns the IPv4 and IPv6 addresses of host (A and AAAA
	// records; IPv4 first). An IP literal is returned as is. A name that
	// exists without addresses gives an empty list and a nil error.
	LookupHost(ctx context.Context, host string) ([]netip.Addr, error)
}

// ErrNotFound is the Cause of the *pipeline.Error returned for NXDOMAIN.
var ErrNotFound = errors.New("dnsx: name does not exist (NXDOMAIN)")

// IsNotFound reports whether err says the name does not exist.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// IsNullMX reports whether mxs is a null MX (RFC 7505): exactly one record
// whose host is the root ".". Such a domain accepts no mail.
func IsNullMX(mxs []MX) bool {
	return len(mxs) == 1 && mxs[0].Host == "."
}

// Options configures a Client. The zero value is usable.
type Options struct {
	// Server is the resolver's address, host:port (a port-less host gets
	// 53). Empty means the first nameserver of ResolvConf.
	Server string
	// ResolvConf is read when Server is empty; default /etc/resolv.conf.
	ResolvConf string
	// Timeout bounds one query attempt (one UDP exchange, or the TCP
	// retry); default 5s. The caller's ctx bounds the whole lookup.
	Timeout time.Duration
	// Attempts is how many times a UDP query is sent before giving up on a
	// timeout; default 2.
	Attempts int
	// CacheSize is the most answers kept; 0 means 4096, negative disables
	// the cache.
	CacheSize int
	// Now is the clock used for cache expiry; nil means time.Now.
	Now func() time.Time
}

// Client is a Resolver backed by github.com/miekg/dns. It is safe for
// concurrent use. Construct it with New.
type Client struct {
	server   string
	timeout  time.Duration
	attempts int
	now      func() time.Time
	udp      *dns.Client
	tcp      *dns.Client

	cacheMax int
	mu       sync.Mutex
	cache    map[cacheKey]cacheEntry
}

var _ Resolver = (*Client)(nil)

type cacheKey struct {
	name  string
	qtype uint16
}

type cacheEntry struct {
	expires time.Time
	mx      []MX
	addrs   []netip.Addr
}

// maxCacheTTL caps how long a cached answer is used, whatever its TTL.
const maxCacheTTL = time.Hour

// New builds a Client. It reads ResolvConf only when Server is empty, and
// fails if no server can be found there.
func New(opts Options) (*Client, error) {
	server := opts.Server
	if server == "" {
		path := opts.ResolvConf
		if path == "" {
			path = "/etc/resolv.conf"
		}
		cc, err := dns.ClientConfigFromFile(path)
		if err != nil {
			return nil, fmt.Errorf("dnsx: no resolver configured and %s unreadable: %w", path, err)
		}
		if len(cc.Servers) == 0 {
			return nil, fmt.Errorf("dnsx: no nameserver in %s", path)
		}
		port := cc.Port
		if port == "" {
			port = "53"
		}
		server = net.JoinHostPort(cc.Servers[0], port)
	} else if _, _, err := net.SplitHostPort(server); err != nil {
		server = net.JoinHostPort(strings.Trim(server, "[]"), "53")
	}
	c := &Client{
		server:   server,
		timeout:  opts.Timeout,
		attempts: opts.Attempts,
		now:      opts.Now,
		cacheMax: opts.CacheSize,
	}
	if c.timeout <= 0 {
		c.timeout = 5 * time.Second
	}
	if c.attempts <= 0 {
		c.attempts = 2
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.cacheMax == 0 {
		c.cacheMax = 4096
	}
	if c.cacheMax > 0 {
		c.cache = make(map[cacheKey]cacheEntry)
	}
	c.udp = &dns.Client{Net: "udp", Timeout: c.timeout, UDPSize: ednsSize}
	c.tcp = &dns.Client{Net: "tcp", Timeout: c.timeout}
	return c, nil
}

// ednsSize is the UDP payload size we advertise (the DNS flag day 2020
// recommendation, which avoids IP fragmentation).
const ednsSize = 1232

// Server returns the address of the resolver the client queries.
func (c *Client) Server() string { return c.server }

// LookupMX implements Resolver.
func (c *Client) LookupMX(ctx context.Context, domain string) ([]MX, error) {
	name, err := toASCII(domain)
	if err != nil {
		return nil, err
	}
	key := cacheKey{name, dns.TypeMX}
	if e, ok := c.cached(key); ok {
		return append([]MX(nil), e.mx...), nil
	}
	msg, err := c.query(ctx, name, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	var mxs []MX
	ttl := maxCacheTTL
	for _, rr := range msg.Answer {
		mx, ok := rr.(*dns.MX)
		if !ok {
			continue
		}
		host := strings.ToLower(mx.Mx)
		if host != "." {
			host = strings.TrimSuffix(host, ".")
		}
		mxs = append(mxs, MX{Host: host, Pref: mx.Preference})
		ttl = min(ttl, time.Duration(mx.Hdr.Ttl)*time.Second)
	}
	if len(mxs) > 0 {
		c.store(key, cacheEntry{expires: c.now().Add(ttl), mx: append([]MX(nil), mxs...)}, ttl)
	}
	return mxs, nil
}

// LookupHost implements Resolver. A and AAAA are asked in parallel. When
// one of the two fails and the other gives addresses, the addresses are
// returned; an error is returned only when no address was found.
func (c *Client) LookupHost(ctx context.Context, host string) ([]netip.Addr, error) {
	if ip, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return []netip.Addr{ip.Unmap()}, nil
	}
	name, err := toASCII(host)
	if err != nil {
		return nil, err
	}
	type result struct {
		addrs []netip.Addr
		err   error
	}
	var aaaa result
	done := make(chan struct{})
	go func() {
		defer close(done)
		aaaa.addrs, aaaa.err = c.lookupAddrs(ctx, name, dns.TypeAAAA)
	}()
	var a result
	a.addrs, a.err = c.lookupAddrs(ctx, name, dns.TypeA)
	<-done

	addrs := append(a.addrs, aaaa.addrs...)
	if len(addrs) > 0 {
		return addrs, nil
	}
	// No address: report NXDOMAIN only when it is certain, else the
	// temporary failure, else "exists without addresses".
	switch {
	case a.err != nil && !IsNotFound(a.err):
		return nil, a.err
	case aaaa.err != nil && !IsNotFound(aaaa.err):
		return nil, aaaa.err
	case a.err != nil:
		return nil, a.err
	case aaaa.err != nil:
		return nil, aaaa.err
	}
	return nil, nil
}

func (c *Client) lookupAddrs(ctx context.Context, name string, qtype uint16) ([]netip.Addr, error) {
	key := cacheKey{name, qtype}
	if e, ok := c.cached(key); ok {
		return append([]netip.Addr(nil), e.addrs...), nil
	}
	msg, err := c.query(ctx, name, qtype)
	if err != nil {
		return nil, err
	}
	var addrs []netip.Addr
	ttl := maxCacheTTL
	for _, rr := range msg.Answer {
		var ip net.IP
		switch rr := rr.(type) {
		case *dns.A:
			ip = rr.A
		case *dns.AAAA:
			ip = rr.AAAA
		default:
			continue
		}
		if rr.Header().Rrtype != qtype {
			continue
		}
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			continue
		}
		addrs = append(addrs, a.Unmap())
		ttl = min(ttl, time.Duration(rr.Header().Ttl)*time.Second)
	}
	if len(addrs) > 0 {
		c.store(key, cacheEntry{expires: c.now().Add(ttl), addrs: append([]netip.Addr(nil), addrs...)}, ttl)
	}
	return addrs, nil
}

// query sends one question and returns a NOERROR answer, or a classified
// *pipeline.Error.
func (c *Client) query(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	m.SetEdns0(ednsSize, false)

	var (
		resp *dns.Msg
		err  error
	)
	for i := 0; i < c.attempts; i++ {
		if ctx.Err() != nil {
			err = ctx.Err()
			break
		}
		resp, _, err = c.udp.ExchangeContext(ctx, m, c.server)
		if err == nil || !isTimeout(err) {
			break
		}
	}
	if err == nil && resp.Truncated {
		resp, _, err = c.tcp.ExchangeContext(ctx, m, c.server)
	}
	qname := strings.TrimSuffix(name, ".")
	if err != nil {
		what := "network error"
		if isTimeout(err) || errors.Is(err, context.DeadlineExceeded) {
			what = "timeout"
		}
		return nil, &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 4, 3},
			Message: fmt.Sprintf("DNS lookup of %s %s failed: %s", qname, dns.TypeToString[qtype], what),
			Cause:   fmt.Errorf("dnsx: query %s %s to %s: %w", qname, dns.TypeToString[qtype], c.server, err)}
	}
	if resp.Id != m.Id {
		return nil, &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 4, 3},
			Message: fmt.Sprintf("DNS lookup of %s %s failed: bad response", qname, dns.TypeToString[qtype])}
	}
	switch resp.Rcode {
	case dns.RcodeSuccess:
		return resp, nil
	case dns.RcodeNameError:
		return nil, &pipeline.Error{Code: 550, Enhanced: pipeline.EnhancedCode{5, 1, 2},
			Message: fmt.Sprintf("%s: domain does not exist", qname), Cause: ErrNotFound}
	}
	rcode := dns.RcodeToString[resp.Rcode]
	if rcode == "" {
		rcode = fmt.Sprintf("rcode %d", resp.Rcode)
	}
	return nil, &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 4, 3},
		Message: fmt.Sprintf("DNS lookup of %s %s failed: %s", qname, dns.TypeToString[qtype], rcode),
		Cause:   fmt.Errorf("dnsx: %s %s from %s: %s", qname, dns.TypeToString[qtype], c.server, rcode)}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// toASCII returns the lower-case absolute (dot-terminated) A-label form of
// name. A name that cannot be converted is a permanent failure.
func toASCII(name string) (string, error) {
	name = strings.TrimSuffix(strings.TrimSpace(name), ".")
	bad := &pipeline.Error{Code: 550, Enhanced: pipeline.EnhancedCode{5, 1, 2},
		Message: fmt.Sprintf("%q: invalid domain name", name)}
	if name == "" {
		return "", bad
	}
	ascii := true
	for i := 0; i < len(name); i++ {
		if name[i] >= 0x80 {
			ascii = false
			break
		}
	}
	if !ascii {
		a, err := idna.Lookup.ToASCII(name)
		if err != nil {
			bad.Cause = err
			return "", bad
		}
		name = a
	}
	name = strings.ToLower(name)
	if _, ok := dns.IsDomainName(name); !ok {
		return "", bad
	}
	return dns.Fqdn(name), nil
}

func (c *Client) cached(k cacheKey) (cacheEntry, bool) {
	if c.cache == nil {
		return cacheEntry{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.cache[k]
	if !ok {
		return cacheEntry{}, false
	}
	if !c.now().Before(e.expires) {
		delete(c.cache, k)
		return cacheEntry{}, false
	}
	return e, true
}

func (c *Client) store(k cacheKey, e cacheEntry, ttl time.Duration) {
	if c.cache == nil || ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.cache) >= c.cacheMax {
		// Drop expired entries; if that frees less than a quarter, start
		// over. Crude, but bounded and O(1) amortised, and a miss only
		// costs a query.
		now := c.now()
		for k, e := range c.cache {
			if !now.Before(e.expires) {
				delete(c.cache, k)
			}
		}
		if len(c.cache) > c.cacheMax*3/4 {
			clear(c.cache)
		}
	}
	c.cache[k] = e
}
