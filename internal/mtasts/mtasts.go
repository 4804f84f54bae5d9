// Package mtasts implements the sending side of SMTP MTA Strict Transport
// Security (RFC 8461): discovering a recipient domain's policy
// (_mta-sts.DOMAIN TXT, section 3.1), fetching it over HTTPS from
// https://mta-sts.DOMAIN/.well-known/mta-sts.txt (section 3.3), parsing it
// (section 3.2), caching it (section 5.1) and matching MX host names
// against its mx patterns (section 4.1).
//
// It is our own code rather than a library: github.com/foxcpp/go-mtasts
// (the one maintained Go implementation) is not served by the module proxy
// this project builds from, and the protocol is small (a TXT record, one
// HTTPS GET, a key/value text file). What applying a policy means for a
// delivery (which MX hosts, which TLS) is decided in internal/delivery.
package mtasts

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/flight"
)

// Modes of a policy (RFC 8461 section 5).
const (
	ModeEnforce = "enforce"
	ModeTesting = "testing"
	ModeNone    = "none"
)

// Limits.
const (
	// MaxBody is the largest policy body accepted, in bytes (RFC 8461
	// section 3.3 suggests 64 KB).
	MaxBody = 64 << 10
	// MaxMaxAge is the largest max_age a policy may give (section 3.2:
	// 31557600 seconds, about a year).
	MaxMaxAge = 31557600 * time.Second
	// DefaultTimeout bounds one policy fetch (connect, TLS, request and
	// body) when Cache.Timeout is 0.
	DefaultTimeout = 30 * time.Second
	// DefaultMaxEntries is Cache.MaxEntries when it is 0.
	DefaultMaxEntries = 10000
	// DefaultFailureTTL is Cache.FailureTTL when it is 0.
	DefaultFailureTTL = 5 * time.Minute
)

// Policy is a parsed MTA-STS policy.
type Policy struct {
	// ID is the id of the TXT record this policy was fetched under.
	ID string
	// Mode is ModeEnforce, ModeTesting or ModeNone.
	Mode string
	// MX are the mx patterns, lower case, without trailing dots; a
	// pattern "*.example.com" matches one extra leftmost label.
	MX []string
	// MaxAge is how long the policy may be cached.
	MaxAge time.Duration
	// Fetched is when the policy was fetched; it expires at
	// Fetched+MaxAge.
	Fetched time.Time
}

// Match reports whether host (an MX host name) matches one of the
// policy's mx patterns (RFC 8461 section 4.1), case-insensitively.
func (p *Policy) Match(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, pat := range p.MX {
		if rest, ok := strings.CutPrefix(pat, "*."); ok {
			if label, found := strings.CutSuffix(host, "."+rest); found && label != "" && !strings.Contains(label, ".") {
				return true
			}
		} else if host == pat {
			return true
		}
	}
	return false
}

// Parse parses a policy body (RFC 8461 section 3.2): "key: value" lines
// separated by LF or CRLF. version must be STSv1, mode one of enforce,
// testing, none, max_age a number of seconds up to MaxMaxAge, and at
// least one mx unless the mode is none. Unknown keys are ignored. The
// error names the field at fault.
func Parse(body []byte) (*Policy, error) {
	p := &Policy{}
	var version, maxAge string
	for _, line := range strings.Split(string(body), "\n") {
		line = strings.TrimSuffix(line, "\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("mta-sts policy: line %q has no colon", line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "version":
			version = v
		case "mode":
			p.Mode = v
		case "max_age":
			maxAge = v
		case "mx":
			p.MX = append(p.MX, strings.ToLower(strings.TrimSuffix(v, ".")))
		}
	}
	if version != "STSv1" {
		return nil, fmt.Errorf("mta-sts policy: version %q, want STSv1", version)
	}
	switch p.Mode {
	case ModeEnforce, ModeTesting, ModeNone:
	default:
		return nil, fmt.Errorf("mta-sts policy: mode %q, want enforce, testing or none", p.Mode)
	}
	n, err := strconv.ParseUint(maxAge, 10, 64)
	if err != nil || len(maxAge) > 10 {
		return nil, fmt.Errorf("mta-sts policy: max_age %q is not a number of seconds", maxAge)
	}
	p.MaxAge = min(time.Duration(n)*time.Second, MaxMaxAge)
	if len(p.MX) == 0 && p.Mode != ModeNone {
		return nil, errors.New("mta-sts policy: no mx")
	}
	return p, nil
}

// ParseTXT returns the id of an MTA-STS TXT record (RFC 8461 section
// 3.1: "v=STSv1; id=..."), or an error when the record is not one.
func ParseTXT(txt string) (string, error) {
	fields := strings.Split(txt, ";")
	if strings.TrimSpace(fields[0]) != "v=STSv1" {
		return "", errors.New("mta-sts TXT record: does not start with v=STSv1")
	}
	for _, f := range fields[1:] {
		k, v, _ := strings.Cut(strings.TrimSpace(f), "=")
		if k != "id" {
			continue
		}
		if v == "" || len(v) > 32 || strings.IndexFunc(v, func(r rune) bool {
			return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9')
		}) >= 0 {
			return "", fmt.Errorf("mta-sts TXT record: invalid id %q", v)
		}
		return v, nil
	}
	return "", errors.New("mta-sts TXT record: no id")
}

// Cache discovers, fetches and caches policies. Set its fields before
// the first Get; it is safe for concurrent use after that.
type Cache struct {
	// Resolver looks up the _mta-sts TXT records. Required.
	Resolver dnsx.Resolver
	// RootCAs verifies the policy host's certificate; nil means the
	// system pool. The certificate is always verified for
	// mta-sts.DOMAIN (section 3.3).
	RootCAs *x509.CertPool
	// DialContext opens the TCP connection to the policy host; nil means
	// looking the host's addresses up through Resolver (the relay's
	// configured DNS, not the system's) and dialling each in turn with a
	// net.Dialer.
	// a net.Dialer. Tests use it to reach a loopback server; it does not
	// change the name the certificate is verified for.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Timeout bounds one fetch; default DefaultTimeout.
	Timeout time.Duration
	// MaxEntries bounds how many domains' policies are kept; when full,
	// expired entries are dropped first, then arbitrary ones. Default
	// DefaultMaxEntries.
	MaxEntries int
	// FailureTTL is how long a failed policy fetch is remembered
	// (the negative cache): for that long, Gets for the domain return
	// the failure again (with the cached policy, if one is still in
	// force) without a TXT lookup or fetch. Default DefaultFailureTTL; a
	// negative value turns the negative cache off. (A fetch is not
	// ended by the Gets waiting for it giving up, only by Timeout.)
	FailureTTL time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	once   sync.Once
	client *http.Client
	flight flight.Group[string, result]
	mu     sync.Mutex
	cache  map[string]*Policy
	failed map[string]failure // guarded by mu
}

// failure is a remembered failed fetch.
type failure struct {
	err   error
	until time.Time
}

func (c *Cache) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *Cache) init() {
	c.once.Do(func() {
		dial := c.DialContext
		if dial == nil {
			dial = c.dialResolved
		}
		tr := &http.Transport{
			Proxy:               nil,
			DialContext:         dial,
			TLSClientConfig:     &tls.Config{RootCAs: c.RootCAs, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout: 10 * time.Second,
			MaxIdleConns:        16,
			IdleConnTimeout:     30 * time.Second,
			DisableCompression:  true,
		}
		c.client = &http.Client{
			Transport: tr,
			Timeout:   cmp.Or(c.Timeout, DefaultTimeout),
			// RFC 8461 section 3.3: senders MUST NOT follow redirects.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
		c.cache = make(map[string]*Policy)
		c.failed = make(map[string]failure)
	})
}

// Get returns the policy that applies to mail for domain, or nil when
// none does, per RFC 8461 section 5.1:
//   - a cached, unexpired policy whose id matches the current TXT record
//     (or when the TXT record cannot be read) is returned without a fetch;
//   - otherwise, when a TXT record exists, the policy is fetched and
//     cached; if the fetch fails, an unexpired cached policy is still
//     returned (a stale policy keeps being enforced), with the fetch
//     error;
//   - no TXT record and nothing cached, or a failed fetch with nothing
//     cached: nil, with an error describing why (nil error when the
//     domain simply has no policy);
//   - for FailureTTL (default 5 minutes) after a failed fetch, a Get that
//     would fetch again returns the same error (and the cached policy, if
//     one is still in force) at once: no TXT lookup, no fetch. A fetch
//     that succeeds ends this early.
//
// Concurrent Gets for a domain without a usable cached policy (none, an
// expired one, or a new id in the TXT record) share one TXT lookup and one
// fetch; each waits under its own ctx, and one that gives up (its ctx
// error is returned, with the cached policy if any) does not end the
// fetch for the others. A non-nil error with a nil policy means "deliver as without MTA-STS";
// callers log it. Mode none policies are returned too; callers ignore
// them.
func (c *Cache) Get(ctx context.Context, domain string) (*Policy, error) {
	c.init()
	if c.Resolver == nil {
		return nil, errors.New("mta-sts: no DNS resolver")
	}
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	// The warm path: a live policy whose id is still the TXT record's
	// (or the record cannot be read) needs no fetch.
	cached := c.live(domain)
	if cached != nil {
		id, err := c.lookupID(ctx, domain)
		if err != nil || cached.ID == id {
			return cached, nil
		}
	}
	if err := c.failure(domain); err != nil {
		return cached, err
	}
	r, err := c.flight.Do(ctx, domain, func(ctx context.Context) (result, error) {
		p, err := c.resolve(ctx, domain)
		return result{p, err}, nil
	})
	if err != nil { // ctx ended while waiting
		return cached, err
	}
	return r.p, r.err
}

// result is what one resolve returned, shared by the Gets merged into it.
type result struct {
	p   *Policy
	err error
}

// live is the cached, unexpired policy of domain, or nil.
func (c *Cache) live(domain string) *Policy {
	c.mu.Lock()
	p := c.cache[domain]
	c.mu.Unlock()
	if p != nil && !c.now().Before(p.Fetched.Add(p.MaxAge)) {
		return nil
	}
	return p
}

// resolve is Get without the warm path: it reads the TXT record and
// fetches the policy when the id is new.
func (c *Cache) resolve(ctx context.Context, domain string) (*Policy, error) {
	now := c.now()
	cached := c.live(domain)
	id, err := c.lookupID(ctx, domain)
	if err != nil {
		if cached != nil {
			return cached, nil
		}
		if dnsx.IsNotFound(err) || dnsx.IsNoData(err) || errors.Is(err, errNoRecord) {
			return nil, nil
		}
		return nil, err
	}
	if cached != nil && cached.ID == id {
		return cached, nil
	}
	p, err := c.fetch(ctx, domain)
	if err != nil {
		c.storeFailure(domain, err, now)
		return cached, err
	}
	p.ID, p.Fetched = id, now
	c.store(domain, p, now)
	return p, nil
}

// failure is the error of domain's remembered failed fetch, or nil.
func (c *Cache) failure(domain string) error {
	c.mu.Lock()
	f, ok := c.failed[domain]
	c.mu.Unlock()
	if !ok || !c.now().Before(f.until) {
		return nil
	}
	return f.err
}

// storeFailure remembers err as domain's failed fetch for FailureTTL.
func (c *Cache) storeFailure(domain string, err error, now time.Time) {
	ttl := cmp.Or(c.FailureTTL, DefaultFailureTTL)
	if ttl < 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	makeRoom(c.failed, domain, cmp.Or(c.MaxEntries, DefaultMaxEntries), func(f failure) bool { return !now.Before(f.until) })
	c.failed[domain] = failure{err: err, until: now.Add(ttl)}
}

var errNoRecord = errors.New("no v=STSv1 TXT record")

// lookupID reads the id of _mta-sts.domain's TXT record. Several STSv1
// records are an error (section 3.1).
func (c *Cache) lookupID(ctx context.Context, domain string) (string, error) {
	res, err := c.Resolver.LookupTXT(ctx, "_mta-sts."+domain)
	if err != nil {
		return "", err
	}
	var ids []string
	var perr error
	for _, txt := range res.Records {
		if !strings.HasPrefix(txt, "v=STSv1") {
			continue
		}
		id, err := ParseTXT(txt)
		if err != nil {
			perr = err
			continue
		}
		ids = append(ids, id)
	}
	switch {
	case len(ids) == 1:
		return ids[0], nil
	case len(ids) > 1:
		return "", fmt.Errorf("_mta-sts.%s: %d STSv1 TXT records", domain, len(ids))
	case perr != nil:
		return "", perr
	}
	return "", errNoRecord
}

// dialResolved connects to addr ("host:port") after looking host up
// through c.Resolver, trying its addresses in the order given (IPv4
// first); the error is the first address's.
func (c *Cache) dialResolved(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	res, err := c.Resolver.LookupHost(ctx, host)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	var first error
	for _, ip := range res.Records {
		conn, err := d.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
		if err == nil {
			return conn, nil
		}
		if first == nil {
			first = err
		}
	}
	return nil, first
}

// fetch GETs and parses the policy of domain.
func (c *Cache) fetch(ctx context.Context, domain string) (*Policy, error) {
	url := "https://mta-sts." + domain + "/.well-known/mta-sts.txt"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("mta-sts policy fetch: %w", err)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("mta-sts policy fetch: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("mta-sts policy fetch: %s: HTTP status %d", url, resp.StatusCode)
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != "text/plain" {
		return nil, fmt.Errorf("mta-sts policy fetch: %s: Content-Type %q, want text/plain", url, resp.Header.Get("Content-Type"))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody+1))
	if err != nil {
		return nil, fmt.Errorf("mta-sts policy fetch: %s: %w", url, err)
	}
	if len(body) > MaxBody {
		return nil, fmt.Errorf("mta-sts policy fetch: %s: larger than %d bytes", url, MaxBody)
	}
	return Parse(body)
}

func (c *Cache) store(domain string, p *Policy, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.failed, domain)
	makeRoom(c.cache, domain, cmp.Or(c.MaxEntries, DefaultMaxEntries), func(e *Policy) bool { return !now.Before(e.Fetched.Add(e.MaxAge)) })
	c.cache[domain] = p
}

// makeRoom makes room in m for key when it is not there and m has max
// entries: it drops the expired entries, then arbitrary ones.
func makeRoom[V any](m map[string]V, key string, max int, expired func(V) bool) {
	if _, ok := m[key]; ok || len(m) < max {
		return
	}
	for k, v := range m {
		if expired(v) {
			delete(m, k)
		}
	}
	for k := range m {
		if len(m) < max {
			break
		}
		delete(m, k)
	}
}

// Len is how many policies are cached.
func (c *Cache) Len() int {
	c.init()
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.cache)
}
