// Package dnsx puts the DNS lookups Sluice needs (MX and addresses for
// outbound delivery; TXT for SPF, DKIM and DMARC) behind a small interface,
// Resolver, so tests can point the relay at a DNS server on loopback (see
// package dnstest) or inject a fake.
//
// A lookup returns a DNS outcome, never an SMTP reply: what an outcome means
// is the caller's decision (delivery bounces mail for a domain that does not
// exist; SPF reads a missing TXT record as "none"). There are four outcomes:
//
//   - records: a nil error and a Result with at least one record and the
//     time the records may be used for;
//   - the name does not exist (NXDOMAIN, RFC 1035 section 4.1.1, RFC 8020):
//     an error matching errors.Is(err, ErrNotFound);
//   - the name exists without records of the asked type (NODATA, RFC 2308
//     section 2.2): errors.Is(err, ErrNoData);
//   - no answer could be had (SERVFAIL, REFUSED or any other rcode, a
//     timeout, a network error, a malformed response, a cancelled ctx): a
//     *TemporaryError, whose Temporary method reports true. Asking again
//     later may succeed.
//
// A name that is not a valid domain name gives ErrInvalidName without a
// query. Use IsNotFound, IsNoData and IsTemporary, or errors.Is and
// errors.As, to tell the outcomes apart; never compare error strings.
//
// The implementation, Client, talks to one configured recursive resolver
// over UDP with EDNS0, retries over TCP when an answer is truncated, and
// follows the CNAME chain the resolver puts in the answer (it does not
// chase CNAMEs itself). Names are absolute (no search list);
// internationalised names are converted to A-labels. Answers are cached:
// positive ones for their TTL (capped by Options.MaxTTL), negative ones
// (NXDOMAIN, NODATA) for the SOA's negative TTL (RFC 2308 section 5,
// capped by Options.MaxNegativeTTL, not at all without an SOA); temporary
// failures are never cached.
//
// This package is not a general-purpose resolver: it knows only the record
// types above and TLSA (LookupTLSA, for DANE).
//
// # DNSSEC
//
// The Client does not validate DNSSEC signatures itself. With
// Options.DNSSEC it sets the AD bit in its queries (RFC 6840 section 5.7,
// which asks a validating resolver to report whether it validated the
// answer without the bulk of RRSIG records that DO would bring) and reports
// the AD bit of each answer as Result.Authenticated. That bit is only as
// trustworthy as the path to the resolver: set DNSSEC only for a
// validating resolver on loopback or another channel an attacker cannot
// forge (RFC 6698 section 4.1, RFC 7672 section 2.1), the usual set-up
// for DANE (a local unbound, knot-resolver or BIND). Validation in process
// would need the root trust anchor, its rollovers, a chain of DNSKEY and
// DS lookups per zone and negative proofs (NSEC, NSEC3); it is a resolver's
// job, not worth its code and latency here. Without Options.DNSSEC,
// Authenticated is always false.
package dnsx

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/idna"

	"github.com/sluice-mta/sluice/internal/flight"
)

// MX is one mail exchanger of a domain. Host is lower-case without the
// trailing dot; the root name of a null MX (RFC 7505) is kept as ".".
type MX struct {
	Host string
	Pref uint16
}

// IsNullMX reports whether mxs is a null MX (RFC 7505 section 3): exactly
// one record whose host is the root ".". That is a DNS fact; what it means
// for mail (the domain accepts none) is the caller's to decide.
func IsNullMX(mxs []MX) bool {
	return len(mxs) == 1 && mxs[0].Host == "."
}

// Result is a positive answer: the records of one type at a name.
type Result[T any] struct {
	// Records holds at least one record, in the order the server sent
	// them. The slice is the caller's: mutating it does not affect the
	// cache.
	Records []T
	// TTL is how long from now the records may be used: the smallest TTL
	// of the records and of the CNAMEs that led to them (RFC 2181
	// section 5.2), capped by Options.MaxTTL, counting down while the
	// answer sits in the cache. Zero means "use once, do not cache" (a TTL
	// of 0, or an address literal that did not come from DNS).
	TTL time.Duration
	// Authenticated is true when the resolver said it validated the
	// answer with DNSSEC (the AD bit, RFC 4035 section 3.2.3), and only
	// with Options.DNSSEC; see the package documentation on DNSSEC. For
	// LookupHost it holds when every answer that had records did.
	Authenticated bool
}

// Resolver is the DNS that Sluice needs. Implementations must be safe for
// concurrent use, must honour ctx's deadline and cancellation, and must
// report outcomes as described in the package documentation: a nil error
// with at least one record, or an error matching ErrNotFound, ErrNoData or
// ErrInvalidName, or a *TemporaryError. Callers treat any other error as
// temporary.
type Resolver interface {
	// LookupMX returns the MX records of domain in the order the server
	// sent them (callers sort by preference). A null MX (RFC 7505) is a
	// record like any other; see IsNullMX.
	LookupMX(ctx context.Context, domain string) (Result[MX], error)
	// LookupHost returns the IPv4 and IPv6 addresses of host (A and AAAA
	// records, IPv4 first). An IP literal, bracketed or not, is returned
	// as is with TTL 0. See Client.LookupHost for how the two answers
	// combine.
	LookupHost(ctx context.Context, host string) (Result[netip.Addr], error)
	// LookupTXT returns one string per TXT record at name. The
	// character-strings of one record are concatenated without
	// separators, as RFC 7208 section 3.3 (SPF) and RFC 6376 section
	// 3.6.2.2 (DKIM) require; the bytes are returned as sent, not
	// necessarily UTF-8.
	LookupTXT(ctx context.Context, name string) (Result[string], error)
}

// The non-temporary outcomes. Lookups return them wrapped with the name
// and type asked; test with errors.Is.
var (
	// ErrNotFound: the name does not exist (rcode NXDOMAIN; RFC 1035
	// section 4.1.1, RFC 2308 section 2.1). By RFC 8020 no name below it
	// exists either. For a CNAME chain it is the last name's outcome
	// (RFC 6604).
	ErrNotFound = errors.New("dnsx: name does not exist (NXDOMAIN)")
	// ErrNoData: the name exists but has no records of the asked type
	// (NOERROR with an empty answer; RFC 2308 section 2.2).
	ErrNoData = errors.New("dnsx: no records of the asked type (NODATA)")
	// ErrInvalidName: the name is not a valid domain name (empty, an empty
	// label, a label over 63 octets, a name over 255, or an IDN that does
	// not convert to A-labels). No query was sent.
	ErrInvalidName = errors.New("dnsx: invalid domain name")
)

// TemporaryError is a lookup that got no usable answer: the server said
// SERVFAIL (RFC 2308 section 7.1), REFUSED or another error rcode, no
// answer came in time, the network failed, the response was malformed, or
// ctx ended. Asking again later may succeed. Err, when set, is the
// underlying error (a net.Error, context.DeadlineExceeded, ...), reachable
// with errors.Is and errors.As.
type TemporaryError struct {
	Name   string // name asked, A-label form without the trailing dot
	Type   string // record type asked: "MX", "A", "AAAA", "TXT"
	Server string // resolver address, host:port
	// Reason is short, fixed text that is safe to show a remote client:
	// an rcode name ("SERVFAIL", "REFUSED", ...), "timeout", "cancelled",
	// "network error" or "bad response".
	Reason string
	Err    error
}

func (e *TemporaryError) Error() string {
	s := fmt.Sprintf("dnsx: %s %s via %s: %s", e.Name, e.Type, e.Server, e.Reason)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *TemporaryError) Unwrap() error { return e.Err }

// Temporary reports true: a temporary failure is worth retrying.
func (e *TemporaryError) Temporary() bool { return true }

// Timeout reports whether the lookup failed because no answer came in time
// (the per-attempt timeout or ctx's deadline).
func (e *TemporaryError) Timeout() bool { return e.Reason == "timeout" }

// IsNotFound reports whether err says the name does not exist.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// IsNoData reports whether err says the name has no records of the type.
func IsNoData(err error) bool { return errors.Is(err, ErrNoData) }

// IsTemporary reports whether err is a *TemporaryError.
func IsTemporary(err error) bool {
	var te *TemporaryError
	return errors.As(err, &te)
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
	// CacheSize is the most answers kept (positive and negative, per name
	// and type); 0 means 4096, negative disables the cache.
	CacheSize int
	// MaxTTL caps the TTL of positive answers, reported and cached;
	// default one hour.
	MaxTTL time.Duration
	// MaxNegativeTTL caps how long NXDOMAIN and NODATA answers are cached;
	// default five minutes, so a newly published record is seen soon.
	// Negative answers without an SOA are not cached (RFC 2308 section 5).
	MaxNegativeTTL time.Duration
	// Now is the clock used for cache expiry; nil means time.Now.
	Now func() time.Time
	// DNSSEC sets the AD bit in queries and reports the answers' AD bit
	// as Result.Authenticated. Set it only when Server is a trusted,
	// validating resolver (see the package documentation on DNSSEC).
	DNSSEC bool
}

// Defaults for zero Options.
const (
	defaultTimeout        = 5 * time.Second
	defaultAttempts       = 2
	defaultCacheSize      = 4096
	defaultMaxTTL         = time.Hour
	defaultMaxNegativeTTL = 5 * time.Minute
)

// ednsSize is the UDP payload size we advertise (the DNS flag day 2020
// recommendation, which avoids IP fragmentation).
const ednsSize = 1232

// maxChain bounds the CNAME chain followed in an answer.
const maxChain = 8

// Client is a Resolver backed by github.com/miekg/dns. It is safe for
// concurrent use. Construct it with New. Concurrent lookups of the same
// name and type that miss the cache are merged into one query (so the
// first deliveries to a new destination ask once, not once per
// session); each caller still waits under its own ctx, and one that
// gives up does not end the query for the others.
type Client struct {
	server   string
	attempts int
	maxTTL   time.Duration
	maxNeg   time.Duration
	now      func() time.Time
	dnssec   bool
	udp      *dns.Client
	tcp      *dns.Client

	cacheMax int
	mu       sync.Mutex
	cache    map[cacheKey]cacheEntry

	flight flight.Group[flightKey, answer]
}

// flightKey identifies a query in flight; Fresh lookups do not share a
// query with cached ones (the latter may answer from the cache).
type flightKey struct {
	cacheKey
	fresh bool
}

// answer is the outcome of one query, shared by the lookups merged into
// it: records (a []T, not to be mutated) or err.
type answer struct {
	records any
	ttl     time.Duration
	ad      bool
	err     error
}

var _ Resolver = (*Client)(nil)

type cacheKey struct {
	name  string
	qtype uint16
}

// cacheEntry is a positive answer (records, a []T) or a negative one (err,
// wrapping ErrNotFound or ErrNoData).
type cacheEntry struct {
	expires time.Time
	records any
	ad      bool
	err     error
}

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
		attempts: cmpOr(opts.Attempts, defaultAttempts),
		maxTTL:   cmpOr(opts.MaxTTL, defaultMaxTTL),
		maxNeg:   cmpOr(opts.MaxNegativeTTL, defaultMaxNegativeTTL),
		now:      opts.Now,
		dnssec:   opts.DNSSEC,
		cacheMax: opts.CacheSize,
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.cacheMax == 0 {
		c.cacheMax = defaultCacheSize
	}
	if c.cacheMax > 0 {
		c.cache = make(map[cacheKey]cacheEntry)
	}
	timeout := cmpOr(opts.Timeout, defaultTimeout)
	c.udp = &dns.Client{Net: "udp", Timeout: timeout, UDPSize: ednsSize}
	c.tcp = &dns.Client{Net: "tcp", Timeout: timeout}
	return c, nil
}

// cmpOr returns v when positive, else def.
func cmpOr[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// Server returns the address of the resolver the client queries.
func (c *Client) Server() string { return c.server }

// LookupMX implements Resolver.
func (c *Client) LookupMX(ctx context.Context, domain string) (Result[MX], error) {
	name, err := toASCII(domain)
	if err != nil {
		return Result[MX]{}, err
	}
	return lookup(ctx, c, name, dns.TypeMX, func(rr dns.RR) (MX, bool) {
		mx, ok := rr.(*dns.MX)
		if !ok {
			return MX{}, false
		}
		host := strings.ToLower(mx.Mx)
		if host != "." {
			host = strings.TrimSuffix(host, ".")
		}
		return MX{Host: host, Pref: mx.Preference}, true
	})
}

// LookupTXT implements Resolver.
func (c *Client) LookupTXT(ctx context.Context, name string) (Result[string], error) {
	qname, err := toASCII(name)
	if err != nil {
		return Result[string]{}, err
	}
	return lookup(ctx, c, qname, dns.TypeTXT, func(rr dns.RR) (string, bool) {
		txt, ok := rr.(*dns.TXT)
		if !ok {
			return "", false
		}
		var b strings.Builder
		for _, s := range txt.Txt {
			b.WriteString(unescape(s))
		}
		return b.String(), true
	})
}

// LookupHost implements Resolver. A and AAAA are asked in parallel and
// combine as follows: if either gives addresses, those are returned (A
// first) with the smaller TTL of the two answers that had records, even
// when the other failed; otherwise the error is a *TemporaryError if
// either lookup failed temporarily (A's first), else ErrNotFound if either
// said NXDOMAIN, else ErrNoData (the name exists without addresses).
func (c *Client) LookupHost(ctx context.Context, host string) (Result[netip.Addr], error) {
	if ip, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return Result[netip.Addr]{Records: []netip.Addr{ip.Unmap()}}, nil
	}
	name, err := toASCII(host)
	if err != nil {
		return Result[netip.Addr]{}, err
	}
	type answer struct {
		res Result[netip.Addr]
		err error
	}
	var a, aaaa answer
	done := make(chan struct{})
	go func() {
		defer close(done)
		aaaa.res, aaaa.err = lookup(ctx, c, name, dns.TypeAAAA, addrOf)
	}()
	a.res, a.err = lookup(ctx, c, name, dns.TypeA, addrOf)
	<-done

	out := Result[netip.Addr]{Authenticated: true}
	for _, x := range []answer{a, aaaa} {
		if x.err != nil {
			continue
		}
		if out.Records == nil || x.res.TTL < out.TTL {
			out.TTL = x.res.TTL
		}
		out.Records = append(out.Records, x.res.Records...)
		out.Authenticated = out.Authenticated && x.res.Authenticated
	}
	if len(out.Records) > 0 {
		return out, nil
	}
	for _, is := range []func(error) bool{IsTemporary, IsNotFound} {
		for _, x := range []answer{a, aaaa} {
			if is(x.err) {
				return Result[netip.Addr]{}, x.err
			}
		}
	}
	return Result[netip.Addr]{}, a.err // ErrNoData, or an unexpected error
}

func addrOf(rr dns.RR) (netip.Addr, bool) {
	var ip net.IP
	switch rr := rr.(type) {
	case *dns.A:
		ip = rr.A
	case *dns.AAAA:
		ip = rr.AAAA
	default:
		return netip.Addr{}, false
	}
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}

// lookup asks one question through the cache and turns the response into
// an outcome. conv picks the records of the asked type out of the answer.
// Lookups that miss the cache at the same time share one query.
func lookup[T any](ctx context.Context, c *Client, name string, qtype uint16, conv func(dns.RR) (T, bool)) (Result[T], error) {
	key := cacheKey{name, qtype}
	fresh := isFresh(ctx)
	if !fresh {
		if e, ttl, ok := c.cached(key); ok {
			if e.err != nil {
				return Result[T]{}, e.err
			}
			return Result[T]{Records: slices.Clone(e.records.([]T)), TTL: ttl, Authenticated: e.ad}, nil
		}
	}
	a, err := c.flight.Do(ctx, flightKey{key, fresh}, func(ctx context.Context) (answer, error) {
		if !fresh {
			// A query that just ended may have filled the cache
			// between our miss and this call.
			if e, ttl, ok := c.cached(key); ok {
				return answer{records: e.records, ttl: ttl, ad: e.ad, err: e.err}, nil
			}
		}
		return resolve(ctx, c, name, qtype, conv), nil
	})
	if err != nil { // ctx ended while waiting
		return Result[T]{}, c.ctxError(name, qtype, err)
	}
	if a.err != nil {
		return Result[T]{}, a.err
	}
	return Result[T]{Records: slices.Clone(a.records.([]T)), TTL: a.ttl, Authenticated: a.ad}, nil
}

// resolve queries the server, caches the outcome and returns it.
func resolve[T any](ctx context.Context, c *Client, name string, qtype uint16, conv func(dns.RR) (T, bool)) answer {
	key := cacheKey{name, qtype}
	resp, err := c.query(ctx, name, qtype)
	if err != nil {
		return answer{err: err}
	}
	typ := dns.TypeToString[qtype]
	qname := strings.TrimSuffix(name, ".")
	if resp.Rcode == dns.RcodeNameError {
		err := fmt.Errorf("%w: %s %s", ErrNotFound, qname, typ)
		c.store(key, cacheEntry{err: err}, c.negativeTTL(resp))
		return answer{err: err}
	}

	// Follow the CNAME chain from name (RFC 1034 section 3.6.2): records
	// count only when owned by a name on it, and the chain's TTLs bound
	// the result's.
	chain := map[string]bool{name: true}
	ttl := c.maxTTL
	for range maxChain {
		grew := false
		for _, rr := range resp.Answer {
			cn, ok := rr.(*dns.CNAME)
			if !ok || !chain[strings.ToLower(cn.Hdr.Name)] {
				continue
			}
			if t := strings.ToLower(cn.Target); !chain[t] {
				chain[t] = true
				ttl = min(ttl, rrTTL(cn))
				grew = true
			}
		}
		if !grew {
			break
		}
	}
	var recs []T
	for _, rr := range resp.Answer {
		h := rr.Header()
		if h.Rrtype != qtype || h.Class != dns.ClassINET || !chain[strings.ToLower(h.Name)] {
			continue
		}
		v, ok := conv(rr)
		if !ok {
			continue
		}
		recs = append(recs, v)
		ttl = min(ttl, rrTTL(rr))
	}
	if len(recs) == 0 {
		err := fmt.Errorf("%w: %s %s", ErrNoData, qname, typ)
		c.store(key, cacheEntry{err: err}, c.negativeTTL(resp))
		return answer{err: err}
	}
	ad := c.dnssec && resp.AuthenticatedData
	c.store(key, cacheEntry{records: recs, ad: ad}, ttl)
	return answer{records: recs, ttl: ttl, ad: ad}
}

// rrTTL is rr's TTL; values with the top bit set count as zero (RFC 2181
// section 8).
func rrTTL(rr dns.RR) time.Duration {
	t := rr.Header().Ttl
	if t > math.MaxInt32 {
		return 0
	}
	return time.Duration(t) * time.Second
}

// negativeTTL is how long a negative response may be cached: the smaller
// of the authority SOA's TTL and MINIMUM field (RFC 2308 section 5),
// capped by MaxNegativeTTL; zero (no caching) without an SOA.
func (c *Client) negativeTTL(resp *dns.Msg) time.Duration {
	for _, rr := range resp.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			if soa.Minttl > math.MaxInt32 {
				return 0
			}
			return min(rrTTL(soa), time.Duration(soa.Minttl)*time.Second, c.maxNeg)
		}
	}
	return 0
}

// query sends one question and returns a NOERROR or NXDOMAIN response, or
// a *TemporaryError.
func (c *Client) query(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	m.AuthenticatedData = c.dnssec
	m.SetEdns0(ednsSize, false)

	fail := func(reason string, err error) error { return c.tempError(name, qtype, reason, err) }
	var (
		resp *dns.Msg
		err  error
	)
	for range c.attempts {
		if err = ctx.Err(); err != nil {
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
	if err != nil {
		return nil, c.ctxError(name, qtype, err)
	}
	if resp.Id != m.Id || len(resp.Question) > 1 || (len(resp.Question) == 1 &&
		(resp.Question[0].Qtype != qtype || !strings.EqualFold(resp.Question[0].Name, name))) {
		return nil, fail("bad response", nil)
	}
	switch resp.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
		return resp, nil
	}
	rcode := dns.RcodeToString[resp.Rcode]
	if rcode == "" {
		rcode = fmt.Sprintf("rcode %d", resp.Rcode)
	}
	return nil, fail(rcode, nil)
}

// tempError is a *TemporaryError for a query of name and qtype.
func (c *Client) tempError(name string, qtype uint16, reason string, err error) error {
	return &TemporaryError{Name: strings.TrimSuffix(name, "."), Type: dns.TypeToString[qtype],
		Server: c.server, Reason: reason, Err: err}
}

// ctxError is the *TemporaryError for an exchange (or a wait for one)
// that failed with err: "cancelled", "timeout" or "network error".
func (c *Client) ctxError(name string, qtype uint16, err error) error {
	switch {
	case errors.Is(err, context.Canceled):
		return c.tempError(name, qtype, "cancelled", err)
	case isTimeout(err) || errors.Is(err, context.DeadlineExceeded):
		return c.tempError(name, qtype, "timeout", err)
	}
	return c.tempError(name, qtype, "network error", err)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// toASCII returns the lower-case absolute (dot-terminated) A-label form of
// name, or an error wrapping ErrInvalidName.
func toASCII(name string) (string, error) {
	name = strings.TrimSuffix(strings.TrimSpace(name), ".")
	if name == "" {
		return "", fmt.Errorf("%w: empty name", ErrInvalidName)
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
			return "", fmt.Errorf("%w: %q: %v", ErrInvalidName, name, err)
		}
		name = a
	}
	name = strings.ToLower(name)
	if _, ok := dns.IsDomainName(name); !ok {
		return "", fmt.Errorf("%w: %q", ErrInvalidName, name)
	}
	return dns.Fqdn(name), nil
}

// unescape undoes the presentation escaping miekg/dns applies to a
// character-string it unpacks (\" \\ \DDD), giving back the bytes sent.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 == len(s) {
			b = append(b, s[i])
			continue
		}
		i++
		if i+2 < len(s) && isDigit(s[i]) && isDigit(s[i+1]) && isDigit(s[i+2]) {
			b = append(b, byte(int(s[i]-'0')*100+int(s[i+1]-'0')*10+int(s[i+2]-'0')))
			i += 2
			continue
		}
		b = append(b, s[i])
	}
	return string(b)
}

func isDigit(b byte) bool { return '0' <= b && b <= '9' }

// cached returns the live entry for k and its remaining TTL.
func (c *Client) cached(k cacheKey) (cacheEntry, time.Duration, bool) {
	if c.cache == nil {
		return cacheEntry{}, 0, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.cache[k]
	if !ok {
		return cacheEntry{}, 0, false
	}
	left := e.expires.Sub(c.now())
	if left <= 0 {
		delete(c.cache, k)
		return cacheEntry{}, 0, false
	}
	return e, left, true
}

// store caches e for ttl; a ttl of zero or less caches nothing.
func (c *Client) store(k cacheKey, e cacheEntry, ttl time.Duration) {
	if c.cache == nil || ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	e.expires = now.Add(ttl)
	if len(c.cache) >= c.cacheMax {
		// Drop expired entries; if that frees less than a quarter, start
		// over. Crude, but bounded and O(1) amortised, and a miss only
		// costs a query.
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
