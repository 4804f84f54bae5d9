package delivery

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/mtasts"
	"github.com/sluice-mta/sluice/internal/tlsrpt"
	"github.com/sluice-mta/sluice/pipeline"
)

// defaults fills the zero values of a Dialer's config.Delivery: they are
// the defaults a configuration gets, kept in internal/config.
var defaults = config.Defaults().Delivery

// defaultMaxAddresses is Dialer.MaxAddresses when it is 0.
const defaultMaxAddresses = 10

// Dialer opens Sessions to the next hop of a route. Set its fields, then
// use it from any number of goroutines; it keeps no state between Dials.
type Dialer struct {
	// Config supplies the port for MX routes, the default TLS policy,
	// TLSSkipVerify and the connect, command and data timeouts. Zero
	// values mean the defaults of config.Defaults().Delivery.
	Config config.Delivery
	// Resolver looks up MX hosts and addresses. Required unless every
	// route names an IP literal.
	Resolver dnsx.Resolver
	// Hostname is the name sent in EHLO; default Config.Hostname, then
	// the OS host name, then "localhost".
	Hostname string
	// TLSConfig is the base for STARTTLS: RootCAs (nil: the system pool),
	// client certificates, versions. Dial clones it and sets ServerName
	// and, for opportunistic TLS or Config.TLSSkipVerify,
	// InsecureSkipVerify.
	TLSConfig *tls.Config
	// NoPipelining makes Send wait for each reply even when the server
	// offers PIPELINING.
	NoPipelining bool
	// MaxAddresses bounds how many addresses one Dial tries, over all MX
	// hosts; default 10.
	MaxAddresses int
	// DialContext opens TCP connections; nil means a net.Dialer. Tests and
	// future egress-address selection hook in here.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger receives each failed attempt at Debug level (the summary is
	// the caller's to log); nil means no logging.
	Logger *slog.Logger
	// Self tells which MX hosts are this node (NewSelf); nil means none
	// is. See Dial for what happens to them.
	Self *Self
	// MTASTS, when set, applies recipient domains' MTA-STS policies
	// (RFC 8461) to MX routes whose TLS policy is not "none"; see Dial.
	// Its RootCAs should be the same as TLSConfig's.
	MTASTS *mtasts.Cache
	// DANE applies MX hosts' DNSSEC-authenticated TLSA records (RFC
	// 7672) to MX routes whose TLS policy is not "none"; see Dial. It
	// needs a Resolver that implements dnsx.TLSAResolver and reports
	// authenticated answers (dnsx.Options.DNSSEC, a trusted validating
	// resolver); otherwise no answer is authenticated and DANE never
	// applies.
	DANE bool
	// TLSReport, when set, is called with the outcome of each TLS policy
	// evaluation of a Dial (RFC 8460 sessions, for internal/tlsrpt), for
	// MX routes whose TLS policy is not none and recipient domains that
	// are names: each connection attempt under an MTA-STS or DANE policy that
	// got past the greeting (success, or the TLS failure that ended it),
	// each session established without a policy (no-policy-found), a
	// policy that could not be fetched (once per Dial), and an enforce
	// policy no MX host matches. Connection failures before TLS are not
	// policy evaluations and are not reported. It is called from the
	// Dial's goroutine and must not block.
	TLSReport func(tlsrpt.Session)
}

// tlsMTASTS is the policy of an attempt under an MTA-STS policy in
// enforce mode: "required", with the certificate always verified.
const tlsMTASTS = "mta-sts"

// NewDialer returns a Dialer for cfg and r with the EHLO name taken from
// cfg.Hostname.
func NewDialer(cfg config.Delivery, r dnsx.Resolver) *Dialer {
	return &Dialer{Config: cfg, Resolver: r}
}

func (d *Dialer) helo() string {
	for _, h := range []string{d.Hostname, d.Config.Hostname} {
		if h != "" {
			return h
		}
	}
	if h, err := os.Hostname(); err == nil && h != "" && validAddress(h) && !strings.Contains(h, " ") {
		return h
	}
	return "localhost"
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// target is one host to try, with its addresses when they are known
// without a lookup (IP literals).
type target struct {
	host  string
	pref  uint16
	addrs []netip.Addr
	// implicit: the recipient domain itself, used as its own MX.
	implicit bool
	// secure: the MX RRset that named host was DNSSEC-authenticated
	// (always for the implicit MX); addrsSecure: so were addrs.
	secure, addrsSecure bool
}

// Attempt is one host or address that Dial tried and the reason it failed.
// IP is empty when the host's addresses could not be looked up.
type Attempt struct {
	Host string
	IP   string
	Err  error
}

// DialError is the Cause of the error Dial returns when every attempt
// failed; it lists them in order. Unwrap yields the last attempt's error
// first, so errors.As finds the failure the summary reports.
type DialError struct {
	Attempts []Attempt
}

func (e *DialError) Error() string {
	var b strings.Builder
	for i, a := range e.Attempts {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(where(a))
		b.WriteString(": ")
		b.WriteString(a.Err.Error())
	}
	return b.String()
}

func (e *DialError) Unwrap() []error {
	errs := make([]error, 0, len(e.Attempts))
	for i := len(e.Attempts) - 1; i >= 0; i-- {
		errs = append(errs, e.Attempts[i].Err)
	}
	return errs
}

func where(a Attempt) string {
	if a.IP == "" {
		return a.Host
	}
	return a.Host + " [" + a.IP + "]"
}

// Dial connects to the next hop for a recipient domain on route and
// returns a Session ready for Send, or a *pipeline.Error.
//
// For an MX route it looks up domain's MX records, sorts them by
// preference (shuffling equal preferences) and tries each host's
// addresses in turn (port route.Port, else Config.Port, else 25), until a
// server greets with 220 and completes EHLO, STARTTLS per the TLS policy,
// and AUTH if the route has credentials. With no MX records the domain's
// own addresses are used (implicit MX). For a relay route it does the same
// for route.Host (a name or an IP literal; port default 25). A recipient
// domain that is an address literal ("[192.0.2.1]", "[IPv6:...]") is
// dialled directly.
//
// Errors, classified at the source:
// The Resolver reports DNS outcomes (package dnsx); their SMTP meaning is
// decided here:
//   - null MX (RFC 7505): 556 5.1.10, at once;
//   - an MX host that is this node (Self, by name or address): only the
//     hosts preferred over it are tried; when it is the best MX (or the
//     implicit MX, or the address literal, is this node) the mail would
//     loop: 554 5.4.6 "mail for D loops back to myself", at once;
//   - the domain does not exist (NXDOMAIN) or is no valid name: 550
//     5.1.2; a temporary DNS failure (SERVFAIL, timeout, network): 451
//     4.4.3;
//   - no MX records (NODATA): the implicit MX; if the domain has no
//     address records either: 550 5.4.4;
//   - an MX host that does not exist or has no address: 550 5.4.4 for
//     that host; a temporary failure looking it up: 451 4.4.3 for it;
//   - every attempt failed permanently (say, 554 greetings, or MX hosts
//     that do not exist): the last failure's code, permanent;
//   - otherwise temporary: the last temporary failure's code (451, or a
//     server's own 4xx such as 421) and enhanced
//     code (4.4.1 connection failed, 4.7.10 TLS required but not
//     offered, 4.7.5 TLS handshake failed, 4.7.8 AUTH failed, or the
//     server's own) and a message naming the last host tried.
//
// The Cause is a *DialError listing every attempt. A relay's name that
// does not resolve is temporary: a broken smarthost setting must not
// bounce mail. At most MaxAddresses addresses are tried; ctx bounds the
// whole Dial, and each connect is bounded by Config.ConnectTimeout and each
// command by Config.CommandTimeout.
//
// TLS policy is route.TLS, else Config.TLS, else opportunistic
// (docs/delivery.md "TLS policies"):
//   - opportunistic: STARTTLS when offered, without verifying the
//     certificate (as MTAs do: an unverified channel still beats clear
//     text); if the handshake fails, reconnect to the same address and
//     continue in clear text;
//   - required: STARTTLS must be offered and succeed, with the
//     certificate verified against TLSConfig.RootCAs (or the system pool)
//     for the host name, unless Config.TLSSkipVerify; otherwise that
//     address fails temporarily and the next one is tried;
//   - verify: as required, and the certificate is always verified;
//   - dane-or-mta-sts (MX routes; verify for a relay route that gets it
//     from Config.TLS): only hosts under DANE or an MTA-STS policy in
//     enforce mode are tried; any other host fails at once with 451 4.7.5
//     (RFC 8460 result "dane-required");
//   - none: never STARTTLS, and neither DANE nor MTA-STS.
//
// A failure a TLS policy caused is recorded with its RFC 8460 result
// type; TLSRemote extracts it from Dial's error for the event's
// remote.tls_failure.
//
// DANE (RFC 7672), when Dialer.DANE is set, for MX routes whose TLS
// policy is not none and a recipient domain that is a name: an MX host
// whose MX records and address records were DNSSEC-authenticated
// (dnsx.Result.Authenticated) has its TLSA records looked up at
// _PORT._tcp.HOST. Authenticated records with a usable one (DANE-TA(2),
// DANE-EE(3)) make the host's policy "dane": STARTTLS required, the
// chain matched against the records (see verifyDANE), whatever
// Config.TLSSkipVerify says; authenticated records none of which is
// usable make TLS required without authentication. A TLSA lookup that
// fails temporarily fails the host (451 4.7.5, "dnssec-invalid"), since
// an attacker may be hiding the records; an answer that is not
// authenticated, or no records, leaves the host to the other policies.
// DANE takes precedence over MTA-STS for the hosts it covers. Messages
// of DANE failures are prefixed "DANE:"; the Session's
// Remote().TLSPolicy is "dane" and TLSValidated true on a match.
//
// MTA-STS (RFC 8461), when Dialer.MTASTS is set, for MX routes whose TLS
// policy is not none and a recipient domain that is a name: the domain's
// policy is looked up (cached; see mtasts.Cache.Get; a lookup or fetch
// failure without a cached policy means no policy, logged at Warn).
//   - enforce: only the MX hosts matching the policy's mx patterns are
//     tried (none matching: 451 4.7.5 at once), each with STARTTLS
//     required and the certificate verified for the MX host name against
//     TLSConfig.RootCAs, even with Config.TLSSkipVerify; a failure is
//     that address's temporary failure (4.7.10 STARTTLS not offered,
//     4.7.5 certificate or handshake), its message prefixed
//     "MTA-STS (enforce):"; the Session's Remote().TLSPolicy is "mta-sts";
//   - testing: delivery as without the policy, but the first reason it
//     would have failed under enforce (an MX host not in the policy, no
//     TLS, a certificate not valid for the host) is in the Session's
//     Remote().MTASTSFailure;
//   - none, or no policy: as without MTA-STS.
//
// AUTH PLAIN is used when route.AuthUser is set; credentials are only sent
// over TLS, or in clear text to a loopback address. A server that lacks
// AUTH PLAIN or rejects the credentials fails the address temporarily.
func (d *Dialer) Dial(ctx context.Context, route *pipeline.Route, domain string) (*Session, error) {
	return d.DialFrom(ctx, route, domain, Egress{})
}

// Egress is where a Dial leaves from and how long it may take: an egress
// source's local address and EHLO name, and a site's timeouts. Zero
// values keep the Dialer's own (the system's choice of address,
// Dialer.Hostname, Config's timeouts).
type Egress struct {
	// Source is the local address to connect from (port 0). An address
	// the host does not have fails every attempt with 451 4.4.1.
	Source netip.Addr
	// HELO is the EHLO name for this source.
	HELO string
	// ConnectTimeout and DataTimeout replace Config's for this Dial and
	// the Session it returns.
	ConnectTimeout, DataTimeout time.Duration
	// RequireTLS is for a message sent with REQUIRETLS (RFC 8689): a
	// session is returned only to a next hop that qualifies (validated
	// TLS, REQUIRETLS offered; see requiretls.go); any other address
	// fails with 550 5.7.30.
	RequireTLS bool
	// IgnoreTLSPolicy is for a message with "TLS-Required: No" (RFC 8689
	// section 5) and without REQUIRETLS: the recipient domain's MTA-STS
	// policy and DANE are not applied (delivery as for a domain without
	// either); the route's own TLS policy still is, and under
	// dane-or-mta-sts such a Dial fails at once with 550 5.7.1.
	IgnoreTLSPolicy bool

	// local is the local address of the Dial's latest connection (set by
	// connect on DialFrom's copy), for TLS reports of failed attempts.
	local net.Addr
}

// DialFrom is Dial from an egress source (see Egress), with the same
// results and errors.
func (d *Dialer) DialFrom(ctx context.Context, route *pipeline.Route, domain string, eg Egress) (*Session, error) {
	if route == nil {
		route = pipeline.MX()
	}
	if err := route.Validate(); err != nil {
		return nil, &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 3, 5},
			Message: "invalid route", Cause: err}
	}
	policy, port := d.policyPort(route)

	targets, err := d.targets(ctx, route, domain, port)
	if err != nil {
		return nil, err
	}
	var (
		sts *mtasts.Policy
		rep *tlsReporter
	)
	if !eg.IgnoreTLSPolicy || eg.RequireTLS {
		sts, rep = d.stsPolicy(ctx, route, domain, policy)
	}
	if sts != nil && sts.Mode == mtasts.ModeEnforce {
		first := ""
		if len(targets) > 0 {
			first = targets[0].host
		}
		targets = slices.DeleteFunc(targets, func(t target) bool { return !sts.Match(t.host) })
		if len(targets) == 0 {
			rep.fail(first, "", "", tlsrpt.ResultValidationFailure, "no MX host matches the MTA-STS policy")
			return nil, &tlsFailure{result: tlsrpt.ResultValidationFailure, policy: tlsMTASTS, host: first, err: pipeline.Errorf(451, pipeline.EnhancedCode{4, 7, 5},
				"MTA-STS (enforce): no MX host of %s matches its policy (id %s)", strings.ToLower(strings.TrimSuffix(domain, ".")), sts.ID)}
		}
		policy = tlsMTASTS
	}
	var tr dnsx.TLSAResolver
	if !eg.IgnoreTLSPolicy || eg.RequireTLS {
		tr = d.daneResolver(route, domain, policy)
	}
	if policy == pipeline.TLSDANEOrMTASTS && eg.IgnoreTLSPolicy && !eg.RequireTLS {
		// Say why, rather than "H has no DNSSEC-authenticated TLSA
		// records" of a host whose records were not looked at. No retry
		// can succeed (the header and the route do not change), so the
		// failure is permanent: 5.7.1 (RFC 3463 "delivery not
		// authorized, message refused"), the relay's own policy refusing
		// the message; not 5.7.5 (no cryptographic check failed) nor
		// 5.7.30 (REQUIRETLS was not asked for, RFC 8689 section 5).
		first := ""
		if len(targets) > 0 {
			first = targets[0].host
		}
		return nil, &tlsFailure{result: tlsrpt.ResultDANERequired, policy: policy, host: first, message: true, err: pipeline.Errorf(550, pipeline.EnhancedCode{5, 7, 1},
			"TLS policy dane-or-mta-sts: the message has TLS-Required: No, which sets aside the DANE and MTA-STS policies the route requires")}
	}
	max := orDefault(d.MaxAddresses, defaultMaxAddresses)
	var attempts []Attempt
	tried := 0
outer:
	for _, t := range targets {
		addrs, secure := t.addrs, t.addrsSecure
		if addrs == nil {
			addrs, secure, err = d.resolve(ctx, route, t)
			if err != nil {
				attempts = append(attempts, Attempt{Host: t.host, Err: err})
				if ctx.Err() != nil {
					break
				}
				continue
			}
		}
		tpolicy, st, err := d.hostPolicy(ctx, tr, t, secure, policy, domain, port)
		if err != nil {
			rep.at(tpolicy, st).failed(t.host, "", nil, err)
			attempts = append(attempts, Attempt{Host: t.host, Err: err})
			continue
		}
		for _, ip := range addrs {
			if tried >= max {
				break outer
			}
			tried++
			s, err := d.attempt(ctx, t.host, ip, port, tpolicy, st, route, &eg)
			if err == nil && eg.RequireTLS {
				if e := s.requireTLSRefusal(); e != nil {
					s.Close()
					s, err = nil, e
				}
			}
			if err == nil {
				if sts != nil && sts.Mode == mtasts.ModeTesting && tpolicy != tlsDANE {
					s.remote.MTASTSFailure, s.remote.TLSFailure = stsTestingFailure(sts, t.host, s)
				}
				rep.at(tpolicy, st).session(t.host, s)
				return s, nil
			}
			err = policyFailure(err, tpolicy, t.host, ip.String())
			rep.at(tpolicy, st).failed(t.host, ip.String(), eg.local, err)
			attempts = append(attempts, Attempt{Host: t.host, IP: ip.String(), Err: err})
			if d.Logger != nil {
				d.Logger.Debug("delivery attempt failed", "domain", domain, "route", route.Kind,
					"host", t.host, "ip", ip.String(), "port", port, "err", err)
			}
			if ctx.Err() != nil {
				break outer
			}
		}
	}
	return nil, summarize(route, domain, attempts, ctx)
}

// stsPolicy is the MTA-STS policy that applies to a Dial, or nil (see
// Dial), and the Dial's TLS reporter (nil when Dialer.TLSReport is not
// set or no policy is evaluated).
func (d *Dialer) stsPolicy(ctx context.Context, route *pipeline.Route, domain, policy string) (*mtasts.Policy, *tlsReporter) {
	return d.stsPolicyReport(ctx, route, domain, policy, d.TLSReport)
}

// stsPolicyReport is stsPolicy reporting to report (nil: no reports, as
// for TLSPlan).
func (d *Dialer) stsPolicyReport(ctx context.Context, route *pipeline.Route, domain, policy string, report func(tlsrpt.Session)) (*mtasts.Policy, *tlsReporter) {
	if route.Kind != pipeline.RouteMX || policy == pipeline.TLSNone {
		return nil, nil
	}
	if _, lit := parseLiteral(domain); lit {
		return nil, nil
	}
	var rep *tlsReporter
	if report != nil {
		rep = &tlsReporter{f: report, base: tlsrpt.Session{Domain: domain, Type: tlsrpt.PolicyNotFound}}
	}
	if d.MTASTS == nil {
		return nil, rep
	}
	p, err := d.MTASTS.Get(ctx, domain)
	if err != nil && d.Logger != nil {
		d.Logger.Warn("MTA-STS policy lookup failed", "domain", domain, "cached", p != nil, "err", err)
	}
	if p == nil && err != nil && rep != nil {
		rep.base.Type = tlsrpt.PolicySTS
		rep.fail("", "", "", tlsrpt.FetchResult(err), "")
		return nil, nil // the Dial goes on without a policy; its sessions are not counted again
	}
	if p == nil || p.Mode == mtasts.ModeNone {
		return nil, rep
	}
	if rep != nil {
		rep.base.Type, rep.base.Policy, rep.base.PolicyMX = tlsrpt.PolicySTS, tlsrpt.PolicyString(p), p.MX
	}
	return p, rep
}

// tlsReporter reports the TLS policy sessions of one Dial
// (Dialer.TLSReport). Its methods do nothing on a nil receiver.
type tlsReporter struct {
	f    func(tlsrpt.Session)
	base tlsrpt.Session // domain and policy
}

// fail reports one session (result "" is a success).
func (r *tlsReporter) fail(host, ip, local, result, detail string) {
	if r == nil {
		return
	}
	s := r.base
	s.MXHost, s.ReceivingIP, s.SendingIP, s.Result, s.Detail = host, ip, local, result, detail
	r.f(s)
}

// session reports an established session: a success, or the failure an
// MTA-STS policy in testing mode saw (Remote().TLSFailure). A session
// without TLS (no policy, opportunistic TLS: STARTTLS not offered,
// refused, or a handshake that failed before a clear-text retry) is a
// starttls-not-supported failure: RFC 8460 section 4.4 counts as
// successful only "successfully negotiated TLS-enabled connections".
func (r *tlsReporter) session(host string, s *Session) {
	if r == nil {
		return
	}
	result, detail := s.remote.TLSFailure, s.remote.MTASTSFailure
	if result == "" && s.remote.TLS == "" {
		result, detail = tlsrpt.ResultSTARTTLSNotSupported, "delivered without TLS (opportunistic: STARTTLS not offered or failed)"
	}
	r.fail(host, s.remote.IP, localIP(s.raw.LocalAddr()), result, detail)
}

// at is the reporter for attempts to a host under policy tpolicy: DANE
// (RFC 8460 policy type "tlsa", the host's TLSA records as the policy
// string) takes precedence over the domain's MTA-STS policy.
func (r *tlsReporter) at(tpolicy string, st *daneState) *tlsReporter {
	if r == nil || tpolicy != tlsDANE {
		return r
	}
	c := *r
	c.base.Type, c.base.Policy, c.base.PolicyMX = tlsrpt.PolicyTLSA, nil, nil
	if st != nil {
		for _, t := range st.tlsa {
			c.base.Policy = append(c.base.Policy, t.String())
		}
	}
	return &c
}

// failed reports an attempt that a TLS policy check failed (err carries
// a *tlsFailure, see policyFailure); other failures (connection refused,
// a 4xx greeting) are not policy evaluations and are not reported.
func (r *tlsReporter) failed(host, ip string, local net.Addr, err error) {
	var f *tlsFailure
	if r == nil || !errors.As(err, &f) {
		return
	}
	r.fail(host, ip, localIP(local), f.result, f.err.Message)
}

// localIP is the IP of a TCP address (the sending IP of a report), or "".
func localIP(a net.Addr) string {
	if a, ok := a.(*net.TCPAddr); ok {
		return a.IP.String()
	}
	return ""
}

// stsTestingFailure says why a session to host would have failed under
// an MTA-STS policy in enforce mode, and the RFC 8460 result type, or
// "", "".
func stsTestingFailure(p *mtasts.Policy, host string, s *Session) (reason, result string) {
	r := s.remote
	switch {
	case !p.Match(host):
		return fmt.Sprintf("MX host %s does not match the policy (id %s)", host, p.ID), tlsrpt.ResultValidationFailure
	case r.TLS == "":
		return "no TLS", tlsrpt.ResultSTARTTLSNotSupported
	case !r.TLSValidated:
		return "certificate not valid for " + host, cmp.Or(tlsResult(s.verifyErr), tlsrpt.ResultValidationFailure)
	}
	return "", ""
}

// policyPort is a route's TLS policy (route.TLS, else Config.TLS, else
// opportunistic; dane-or-mta-sts is verify for a relay) and port.
func (d *Dialer) policyPort(route *pipeline.Route) (string, int) {
	policy := orDefault(orDefault(route.TLS, d.Config.TLS), defaults.TLS)
	if policy == pipeline.TLSDANEOrMTASTS && route.Kind != pipeline.RouteMX {
		policy = pipeline.TLSVerify // the MX default; a relay has neither
	}
	port := route.Port
	if port == 0 && route.Kind == pipeline.RouteMX {
		port = d.Config.Port
	}
	return policy, orDefault(port, defaults.Port)
}

// daneResolver is the resolver for a Dial's TLSA lookups, or nil when
// DANE does not apply to it (see Dial).
func (d *Dialer) daneResolver(route *pipeline.Route, domain, policy string) dnsx.TLSAResolver {
	if !d.DANE || route.Kind != pipeline.RouteMX || policy == pipeline.TLSNone {
		return nil
	}
	if _, lit := parseLiteral(domain); lit {
		return nil
	}
	tr, _ := d.Resolver.(dnsx.TLSAResolver)
	return tr
}

// hostPolicy is the TLS policy of the attempts to MX host t, whose
// addresses were DNSSEC-authenticated when secure: "dane" with the
// host's DANE state when tr is set, the MX and address answers were
// authenticated and so is a TLSA RRset (RFC 7672 section 2.2); else
// policy. An error (a *tlsFailure) means the host is not to be tried: its
// TLSA lookup failed, or policy is dane-or-mta-sts and DANE does not
// apply.
func (d *Dialer) hostPolicy(ctx context.Context, tr dnsx.TLSAResolver, t target, secure bool, policy, domain string, port int) (string, *daneState, error) {
	if tr != nil && t.secure && secure {
		st, err := lookupDANE(ctx, tr, t.host, port)
		if err != nil {
			f := err.(*tlsFailure)
			f.host = t.host
			return tlsDANE, nil, f
		}
		if st != nil {
			return tlsDANE, st, nil
		}
	}
	if policy == pipeline.TLSDANEOrMTASTS {
		return policy, nil, &tlsFailure{result: tlsrpt.ResultDANERequired, policy: policy, host: t.host,
			err: pipeline.Errorf(451, pipeline.EnhancedCode{4, 7, 5}, "TLS policy dane-or-mta-sts: %s has no DNSSEC-authenticated TLSA records and %s no MTA-STS policy in enforce mode",
				t.host, strings.ToLower(strings.TrimSuffix(domain, ".")))}
	}
	return policy, nil, nil
}

// policyFailure gives a failed attempt under an enforcing policy (DANE,
// MTA-STS, verify, required) its reason prefix and, when TLS was the
// cause, the *tlsFailure that carries the RFC 8460 result type.
func policyFailure(err error, policy, host, ip string) error {
	var pe *pipeline.Error
	if !errors.As(err, &pe) {
		return err
	}
	out := err
	switch policy {
	case tlsMTASTS:
		pe = &pipeline.Error{Code: pe.Code, Enhanced: pe.Enhanced, Message: "MTA-STS (enforce): " + pe.Message, Cause: pe}
		out = pe
	case tlsDANE:
		msg := pe.Message
		var dm *daneMismatch
		if errors.As(err, &dm) {
			msg = "TLS handshake failed: " + dm.Error()
		}
		pe = &pipeline.Error{Code: pe.Code, Enhanced: pe.Enhanced, Message: "DANE: " + msg, Cause: pe}
		out = pe
	case pipeline.TLSRequired, pipeline.TLSVerify:
	default:
		return err
	}
	r := tlsResult(pe)
	if r == "" {
		return out
	}
	return &tlsFailure{result: r, policy: policy, host: host, ip: ip, err: pe}
}

// targets lists the hosts to try, in order, without this node (Self) or
// any host not preferred over it.
func (d *Dialer) targets(ctx context.Context, route *pipeline.Route, domain string, port int) ([]target, error) {
	if route.Kind == pipeline.RouteRelay {
		if ip, ok := parseLiteral(route.Host); ok {
			return []target{{host: route.Host, addrs: []netip.Addr{ip}}}, nil
		}
		return []target{{host: strings.ToLower(strings.TrimSuffix(route.Host, "."))}}, nil
	}
	if ip, ok := parseLiteral(domain); ok && strings.HasPrefix(domain, "[") {
		if d.Self.IsAddr(ip, port) {
			return nil, loopError(domain)
		}
		return []target{{host: domain, addrs: []netip.Addr{ip}}}, nil
	}
	if d.Resolver == nil {
		return nil, &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 3, 5}, Message: "no DNS resolver configured"}
	}
	res, err := d.Resolver.LookupMX(ctx, domain)
	switch {
	case errors.Is(err, dnsx.ErrNoData):
		// No MX records: the domain is its own MX (RFC 5321 section 5.1).
	case err != nil:
		return nil, dnsFailure(domain, err)
	case dnsx.IsNullMX(res.Records):
		return nil, pipeline.Errorf(556, pipeline.EnhancedCode{5, 1, 10},
			"%s does not accept mail (null MX)", domain)
	}
	// A "." among other MX records breaks RFC 7505 section 3; skip it.
	mxs := slices.DeleteFunc(res.Records, func(m dnsx.MX) bool { return m.Host == "." || m.Host == "" })
	if len(mxs) == 0 {
		t := target{host: strings.ToLower(strings.TrimSuffix(domain, ".")), implicit: true, secure: true}
		if d.Self != nil {
			if addrs, secure, err := d.resolve(ctx, route, t); err == nil {
				if slices.ContainsFunc(addrs, func(ip netip.Addr) bool { return d.Self.IsAddr(ip, port) }) {
					return nil, loopError(domain)
				}
				t.addrs, t.addrsSecure = addrs, secure
			}
		}
		return []target{t}, nil
	}
	rand.Shuffle(len(mxs), func(i, j int) { mxs[i], mxs[j] = mxs[j], mxs[i] })
	slices.SortStableFunc(mxs, func(a, b dnsx.MX) int { return int(a.Pref) - int(b.Pref) })
	ts := make([]target, 0, len(mxs))
	for _, m := range mxs {
		if slices.ContainsFunc(ts, func(t target) bool { return t.host == m.Host }) {
			continue
		}
		ts = append(ts, target{host: m.Host, pref: m.Pref, secure: res.Authenticated})
	}
	return d.beforeSelf(ctx, route, domain, port, ts)
}

// beforeSelf drops from the MX targets (sorted by preference) this node
// and every host not preferred over it (RFC 5321 section 5.1: equal
// preference is not preferred). When nothing is left, this node is the
// best MX: a loop, 554 5.4.6. Hosts are recognised by name or by address;
// to learn the addresses each host is resolved here, in order, until
// this node is found (the results are kept for Dial). A host that does
// not resolve is not this node; its failure is recorded when Dial tries
// it.
func (d *Dialer) beforeSelf(ctx context.Context, route *pipeline.Route, domain string, port int, ts []target) ([]target, error) {
	if d.Self == nil {
		return ts, nil
	}
	for k := range ts {
		self := d.Self.IsName(ts[k].host)
		if !self {
			addrs, secure, err := d.resolve(ctx, route, ts[k])
			if err != nil {
				continue
			}
			ts[k].addrs, ts[k].addrsSecure = addrs, secure
			self = slices.ContainsFunc(addrs, func(ip netip.Addr) bool { return d.Self.IsAddr(ip, port) })
		}
		if !self {
			continue
		}
		best := slices.IndexFunc(ts, func(t target) bool { return t.pref >= ts[k].pref })
		if best == 0 {
			return nil, loopError(domain)
		}
		if d.Logger != nil {
			d.Logger.Debug("MX host is this node; using only MX hosts preferred over it",
				"domain", domain, "host", ts[k].host, "pref", ts[k].pref)
		}
		return ts[:best], nil
	}
	return ts, nil
}

// loopError is the bounce for a domain whose best MX is this node.
func loopError(domain string) *pipeline.Error {
	return pipeline.Errorf(554, pipeline.EnhancedCode{5, 4, 6},
		"mail for %s loops back to myself", strings.ToLower(strings.TrimSuffix(domain, ".")))
}

// parseLiteral parses an IP literal: "192.0.2.1", "[192.0.2.1]",
// "[IPv6:2001:db8::1]", "2001:db8::1".
func parseLiteral(s string) (netip.Addr, bool) {
	s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	if len(s) > 5 && strings.EqualFold(s[:5], "IPv6:") {
		s = s[5:]
	}
	ip, err := netip.ParseAddr(s)
	if err != nil || ip.Zone() != "" {
		return netip.Addr{}, false
	}
	return ip.Unmap(), true
}

// resolve looks up a target's addresses and classifies the failure: a
// relay's is always temporary (a broken smarthost setting must not bounce
// mail), an MX host's or the implicit MX's is permanent unless DNS failed
// temporarily. It also reports whether the addresses were
// DNSSEC-authenticated.
func (d *Dialer) resolve(ctx context.Context, route *pipeline.Route, t target) ([]netip.Addr, bool, error) {
	addrs, err := d.resolveAddrs(ctx, route, t)
	return addrs.Records, addrs.Authenticated, err
}

func (d *Dialer) resolveAddrs(ctx context.Context, route *pipeline.Route, t target) (dnsx.Result[netip.Addr], error) {
	var none dnsx.Result[netip.Addr]
	if d.Resolver == nil {
		return none, &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 3, 5}, Message: "no DNS resolver configured"}
	}
	res, err := d.Resolver.LookupHost(ctx, t.host)
	if err == nil && len(res.Records) > 0 {
		return res, nil
	}
	if errors.Is(err, dnsx.ErrNoData) {
		err = nil // the name exists without addresses
	}
	var pe *pipeline.Error
	if err != nil {
		pe = dnsFailure(t.host, err)
	}
	relay := route.Kind == pipeline.RouteRelay
	switch {
	case pe != nil && (relay || pe.Temporary()):
		if !pe.Temporary() {
			pe = &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 4, 3}, Message: pe.Message, Cause: pe.Cause}
		}
		return none, pe
	case relay:
		return none, &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 4, 4},
			Message: fmt.Sprintf("relay host %s has no address", t.host)}
	case t.implicit:
		e := pipeline.Errorf(550, pipeline.EnhancedCode{5, 4, 4}, "%s has no MX or address records", t.host)
		if pe != nil {
			e.Cause = pe // NXDOMAIN after the MX lookup said NODATA
		}
		return none, e
	case pe != nil:
		return none, &pipeline.Error{Code: 550, Enhanced: pipeline.EnhancedCode{5, 4, 4},
			Message: fmt.Sprintf("MX host %s does not exist", t.host), Cause: pe}
	}
	return none, pipeline.Errorf(550, pipeline.EnhancedCode{5, 4, 4}, "MX host %s has no address", t.host)
}

// dnsFailure is the SMTP meaning of a failed DNS lookup of name, before
// the caller's context (relay or MX host) adjusts it:
//   - a temporary failure (*dnsx.TemporaryError): 451 4.4.3, the queue
//     retries;
//   - NXDOMAIN (dnsx.ErrNotFound): 550 5.1.2, the destination does not
//     exist (RFC 3463 "bad destination system address");
//   - an invalid name (dnsx.ErrInvalidName): 550 5.1.2;
//   - NODATA (dnsx.ErrNoData) is not a failure for MX (implicit MX) nor
//     for hosts (no address): callers handle it before calling this;
//   - a *pipeline.Error from a custom Resolver keeps its reply; anything
//     else is temporary, 451 4.4.3, as a retry is cheaper than a wrong
//     bounce.
//
// The Cause is err itself, so errors.Is(err, dnsx.ErrNotFound) holds.
func dnsFailure(name string, err error) *pipeline.Error {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	var te *dnsx.TemporaryError
	var pe *pipeline.Error
	switch {
	case errors.As(err, &te):
		return &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 4, 3},
			Message: fmt.Sprintf("DNS lookup of %s %s failed: %s", te.Name, te.Type, te.Reason), Cause: err}
	case errors.Is(err, dnsx.ErrNotFound):
		return &pipeline.Error{Code: 550, Enhanced: pipeline.EnhancedCode{5, 1, 2},
			Message: fmt.Sprintf("%s: domain does not exist", name), Cause: err}
	case errors.Is(err, dnsx.ErrInvalidName):
		return &pipeline.Error{Code: 550, Enhanced: pipeline.EnhancedCode{5, 1, 2},
			Message: fmt.Sprintf("%q: invalid domain name", name), Cause: err}
	case errors.As(err, &pe):
		return pe
	}
	return &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 4, 3}, Message: "DNS lookup failed", Cause: err}
}

// asReply makes any error a *pipeline.Error; unknown errors are
// temporary.
func asReply(err error) *pipeline.Error {
	var pe *pipeline.Error
	if errors.As(err, &pe) {
		return pe
	}
	return &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 4, 3}, Message: "DNS lookup failed", Cause: err}
}

// retryClear asks attempt to reconnect without STARTTLS.
type retryClear struct{ err error }

func (r *retryClear) Error() string { return r.err.Error() }
func (r *retryClear) Unwrap() error { return r.err }

// attempt connects to one address; an opportunistic TLS failure gets a
// second connection in clear text.
func (d *Dialer) attempt(ctx context.Context, host string, ip netip.Addr, port int, policy string, dane *daneState, route *pipeline.Route, eg *Egress) (*Session, error) {
	s, err := d.connect(ctx, host, ip, port, policy, dane, route, eg, true)
	var rc *retryClear
	if errors.As(err, &rc) {
		return d.connect(ctx, host, ip, port, policy, dane, route, eg, false)
	}
	return s, err
}

// connect makes one connection; dane is the host's DANE state when
// policy is "dane".
func (d *Dialer) connect(ctx context.Context, host string, ip netip.Addr, port int, policy string, dane *daneState, route *pipeline.Route, eg *Egress, tryTLS bool) (_ *Session, err error) {
	connectTimeout := orDefault(eg.ConnectTimeout, orDefault(d.Config.ConnectTimeout, defaults.ConnectTimeout))
	dial := d.DialContext
	if dial == nil || eg.Source.IsValid() {
		var nd net.Dialer
		if eg.Source.IsValid() {
			nd.LocalAddr = &net.TCPAddr{IP: eg.Source.AsSlice()}
		}
		dial = nd.DialContext
	}
	dctx, cancel := context.WithTimeout(ctx, connectTimeout)
	conn, err := dial(dctx, "tcp", hostPort(ip.String(), port))
	cancel()
	if err != nil {
		return nil, &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 4, 1},
			Message: "cannot connect: " + dialReason(ctx, err), Cause: err}
	}
	eg.local = conn.LocalAddr()

	s := newSession(conn, pipeline.Remote{Host: host, IP: ip.String()},
		orDefault(d.Config.CommandTimeout, defaults.CommandTimeout),
		orDefault(eg.DataTimeout, orDefault(d.Config.DataTimeout, defaults.DataTimeout)))
	stop := s.watch(ctx)
	defer stop()
	defer func() {
		if err != nil {
			s.Close()
		}
	}()

	s.remote.TLSPolicy = policy
	s.routeKind = route.Kind
	required := policy != pipeline.TLSOpportunistic && policy != pipeline.TLSNone
	helo := orDefault(eg.HELO, d.helo())
	if err := s.greet(ctx); err != nil {
		return nil, err
	}
	if err := s.hello(ctx, helo); err != nil {
		return nil, err
	}
	if policy != pipeline.TLSNone && tryTLS {
		if _, offered := s.ext["STARTTLS"]; !offered {
			if required {
				return nil, pipeline.Errorf(451, pipeline.EnhancedCode{4, 7, 10},
					"STARTTLS not offered, and the TLS policy requires it")
			}
		} else {
			cfg := d.tlsConfig(host, policy)
			if dane != nil {
				daneTLS(cfg, dane, host)
			}
			err := s.startTLS(ctx, cfg)
			var refused *tlsRefused
			switch {
			case err == nil:
				if err := s.hello(ctx, helo); err != nil {
					return nil, err
				}
			case errors.As(err, &refused):
				if required {
					return nil, &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 7, 10},
						Message: "STARTTLS refused, and the TLS policy requires it: " + refused.e.Message, Cause: refused.e.Cause}
				}
			case required:
				return nil, err
			default:
				return nil, &retryClear{err}
			}
		}
	} else if required {
		// tryTLS is only false for opportunistic retries; be safe anyway.
		return nil, pipeline.Errorf(451, pipeline.EnhancedCode{4, 7, 10}, "TLS required")
	}
	if route.AuthUser != "" {
		if s.remote.TLS == "" && !ip.IsLoopback() {
			return nil, pipeline.Errorf(451, pipeline.EnhancedCode{4, 7, 10},
				"refusing to send credentials over an unencrypted connection")
		}
		if err := s.auth(ctx, route.AuthUser, route.AuthPass); err != nil {
			return nil, err
		}
	}
	_, pipelining := s.ext["PIPELINING"]
	s.pipelining = pipelining && !d.NoPipelining
	return s, nil
}

func (d *Dialer) tlsConfig(host, policy string) *tls.Config {
	var cfg *tls.Config
	if d.TLSConfig != nil {
		cfg = d.TLSConfig.Clone()
	} else {
		cfg = &tls.Config{}
	}
	if ip, ok := parseLiteral(host); ok {
		cfg.ServerName = ip.String()
	} else {
		cfg.ServerName = host
	}
	if policy == pipeline.TLSOpportunistic || d.Config.TLSSkipVerify && policy == pipeline.TLSRequired {
		cfg.InsecureSkipVerify = true
	}
	return cfg
}

// dialReason is a short, client-safe reason for a failed connect.
func dialReason(ctx context.Context, err error) string {
	switch {
	case ctx.Err() != nil:
		return "delivery cancelled"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		return "connection timed out"
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EHOSTUNREACH):
		return "network unreachable"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	}
	return "network error"
}

// summarize builds Dial's error from the failed attempts.
func summarize(route *pipeline.Route, domain string, attempts []Attempt, ctx context.Context) error {
	dest := domain
	what := "MX hosts"
	if route.Kind == pipeline.RouteRelay {
		dest = route.Host
		what = "relay addresses"
	}
	if len(attempts) == 0 {
		return &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 4, 4},
			Message: fmt.Sprintf("no address to deliver to for %s", dest)}
	}
	cause := &DialError{Attempts: attempts}
	allPerm := ctx.Err() == nil
	lastTemp := -1
	for i, a := range attempts {
		if pipeline.IsTemporary(a.Err) {
			allPerm = false
			lastTemp = i
		}
	}
	pick := len(attempts) - 1
	if !allPerm && lastTemp >= 0 {
		pick = lastTemp
	}
	a := attempts[pick]
	pe := asReply(a.Err) // any *pipeline.Error; others become 451 4.4.3
	var msg string
	if len(attempts) == 1 {
		msg = fmt.Sprintf("%s: %s", where(a), pe.Message)
	} else {
		msg = fmt.Sprintf("all %s for %s failed (%d tried); last: %s: %s", what, dest, len(attempts), where(a), pe.Message)
	}
	if allPerm {
		return &pipeline.Error{Code: pe.Code, Enhanced: pe.EnhancedOrDefault(), Message: msg, Cause: cause}
	}
	// Keep a temporary reply as received (a 421 stays 421); a permanent
	// one among temporary failures (or a cancelled Dial) becomes 451.
	code, enh := pe.Code, pe.EnhancedOrDefault()
	if code/100 != 4 {
		code = 451
	}
	if enh[0] != 4 {
		enh = pipeline.EnhancedCode{4, 4, 1}
	}
	return &pipeline.Error{Code: code, Enhanced: enh, Message: msg, Cause: cause}
}
