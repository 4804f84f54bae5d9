// Package spf is the spf built-in stage: at MAIL FROM it checks whether
// the connecting client may send for the envelope sender's domain (RFC
// 7208) and records the result for the Authentication-Results field, for
// later stages (dmarc) and for Lua (msg.auth.spf). It decides nothing on
// its own: rejecting on "fail" is policy, made in Lua or by the dmarc
// stage.
//
// The evaluation is blitiri.com.ar/go/spf's (the library chasquid uses),
// with its RFC 7208 section 4.6.4 limits: 10 DNS-querying terms and 2
// void lookups, then permerror. Every query goes through the node's
// resolver (pipeline.Env.Resolver, internal/dnsx: miekg/dns with timeouts
// and TCP fallback), through an adapter from its outcomes to the
// *net.DNSError values the library classifies: no record is IsNotFound,
// any other failure IsTemporary (temperror).
package spf

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"

	libspf "blitiri.com.ar/go/spf"

	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/mailtext"
	"github.com/sluice-mta/sluice/internal/stages/inbound"
	"github.com/sluice-mta/sluice/internal/stages/opts"
	"github.com/sluice-mta/sluice/pipeline"
)

func init() { pipeline.Register("spf", New) }

// Scratch keys the stage leaves for later stages of the transaction.
const (
	ScratchResult = "spf"        // pass, fail, softfail, neutral, none, temperror, permerror
	ScratchDomain = "spf.domain" // the domain checked: the sender's, or the HELO name for <>
)

// Stage is the spf stage (on_mail). Safe for concurrent use.
type Stage struct {
	inbound.Base
	res pipeline.HostResolver
}

var (
	_ pipeline.MailHook    = (*Stage)(nil)
	_ pipeline.Provisioner = (*Stage)(nil)
)

// New builds an spf stage. Option: check_submissions (default false: mail
// our own clients submit, pipeline.Conn.Submission, is not checked).
func New(name string, m map[string]any) (pipeline.Stage, error) {
	o := opts.New("spf", m)
	s := &Stage{Base: inbound.NewBase(name, o)}
	if err := o.Err(); err != nil {
		return nil, err
	}
	return s, nil
}

// Provision takes the node's resolver, which must answer MX, address and
// PTR questions too (pipeline.HostResolver).
func (s *Stage) Provision(env *pipeline.Env) error {
	hr, ok := env.Resolver.(pipeline.HostResolver)
	if !ok {
		return fmt.Errorf("sluice.builtin.spf: the node's resolver cannot look up MX and address records")
	}
	s.res = hr
	return s.ProvisionMetrics(env)
}

// OnMail checks the client's address against the sender's domain (or,
// for the null sender, the HELO name: RFC 7208 section 2.4).
func (s *Stage) OnMail(ctx context.Context, txn *pipeline.Txn) (pipeline.Verdict, error) {
	var v pipeline.Verdict
	c := txn.Conn
	if c == nil || c.Source != pipeline.SourceSMTP || !c.RemoteIP.IsValid() || s.Skip(c) {
		return v, nil
	}
	res, domain, err := Check(ctx, s.res, c.RemoteIP, c.HELO, txn.Sender)
	a := pipeline.AuthResult{Method: "spf", Result: string(res)}
	if txn.Sender != "" {
		a.Props = []string{"smtp.mailfrom=" + mailtext.AuthPropValue(txn.Sender)}
	} else {
		a.Props = []string{"smtp.helo=" + mailtext.AuthPropValue(c.HELO)}
	}
	if err != nil && (res == libspf.PermError || res == libspf.TempError) {
		a.Reason = mailtext.AuthReason(err.Error())
	}
	v.Edits.AuthResults = []pipeline.AuthResult{a}
	s.Count(v.Edits.AuthResults)
	v.Edits.SetScratch(ScratchResult, string(res))
	v.Edits.SetScratch(ScratchDomain, domain)
	return v, nil
}

// Check evaluates SPF for a client at ip that said helo and gave sender
// (RFC 7208 section 4), through res, and returns the result and the
// domain checked. err says why for permerror and temperror.
func Check(ctx context.Context, res pipeline.HostResolver, ip netip.Addr, helo, sender string) (libspf.Result, string, error) {
	domain := helo
	if _, d, ok := strings.Cut(sender, "@"); ok && sender != "" {
		domain = d
	}
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	r, err := libspf.CheckHostWithSender(net.IP(ip.Unmap().AsSlice()), helo, sender,
		libspf.WithContext(ctx), libspf.WithResolver(adapter{res}))
	return r, domain, err
}

// adapter gives the library the node's resolver (libspf.DNSResolver).
type adapter struct{ r pipeline.HostResolver }

func (a adapter) LookupTXT(ctx context.Context, name string) ([]string, error) {
	txt, _, err := a.r.LookupTXT(ctx, name)
	if err != nil {
		return nil, dnsx.NetError(name, err)
	}
	return txt, nil
}

func (a adapter) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	hosts, _, err := a.r.LookupMX(ctx, name)
	if err != nil {
		return nil, dnsx.NetError(name, err)
	}
	out := make([]*net.MX, 0, len(hosts))
	for i, h := range hosts {
		out = append(out, &net.MX{Host: h + ".", Pref: uint16(i)})
	}
	return out, nil
}

func (a adapter) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	ips, _, err := a.r.LookupIP(ctx, host)
	if err != nil {
		return nil, dnsx.NetError(host, err)
	}
	out := make([]net.IPAddr, 0, len(ips))
	for _, ip := range ips {
		out = append(out, net.IPAddr{IP: net.IP(ip.AsSlice())})
	}
	return out, nil
}

func (a adapter) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return nil, &net.DNSError{Err: "not an IP address", Name: addr, IsNotFound: true}
	}
	names, _, err := a.r.LookupPTR(ctx, ip)
	if err != nil {
		return nil, dnsx.NetError(addr, err)
	}
	out := make([]string, 0, len(names))
	for _, n := range names {
		out = append(out, n+".")
	}
	return out, nil
}
