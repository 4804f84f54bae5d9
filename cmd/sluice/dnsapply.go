package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/dkim"
	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/domains"
)

const dnsApplyUsage = `Usage: sluice dns apply DOMAIN --server HOST:PORT --zone ZONE
           [--tsig-name NAME --tsig-secret BASE64 [--tsig-algo hmac-sha256]]
           [-c FILE] [--dry-run]

Makes the zone ZONE on the DNS server HOST:PORT (its primary, which
accepts RFC 2136 dynamic updates) hold the records 'sluice dns records
DOMAIN' lists. It reads the records published now from that server,
works out the difference (the same judgement as 'sluice dns check') and
sends one UPDATE, signed with TSIG (RFC 8945) when --tsig-name is given:
a missing record is added; a wrong SPF record is replaced by the merged
one (your other mechanisms kept); a wrong DKIM or DMARC record replaced;
a name that must become a CNAME (sluice.dns_server) loses its other
records. Records of other kinds are not touched. A second run finds
nothing to change and sends nothing.

  --server HOST:PORT  the zone's primary server (port 53 if omitted)
  --zone ZONE         the zone to update (the records' names must be in it)
  --tsig-name NAME    TSIG key name, as configured on the server
  --tsig-secret B64   TSIG key secret, base64 (as in BIND's key statement)
  --tsig-algo ALGO    hmac-sha256 (default), hmac-sha512, hmac-sha384,
                      hmac-sha224 or hmac-sha1
  -c FILE             configuration file (default pipeline.lua)
  --dry-run           print the changes without sending them

Exit codes: 0 the zone holds the records (or nothing to change), 1 the
server refused or failed, 2 usage.
`

var tsigAlgos = map[string]string{
	"hmac-sha1": dns.HmacSHA1, "hmac-sha224": dns.HmacSHA224, "hmac-sha256": dns.HmacSHA256,
	"hmac-sha384": dns.HmacSHA384, "hmac-sha512": dns.HmacSHA512,
}

// runDNSApply implements `sluice dns apply`.
func runDNSApply(args []string, stdout, stderr io.Writer) int {
	fset := flag.NewFlagSet("dns apply", flag.ContinueOnError)
	fset.SetOutput(stderr)
	fset.Usage = func() { fmt.Fprint(stderr, dnsApplyUsage) }
	cfgPath := fset.String("c", "pipeline.lua", "configuration file")
	server := fset.String("server", "", "primary DNS server")
	zone := fset.String("zone", "", "zone")
	tsigName := fset.String("tsig-name", "", "TSIG key name")
	tsigSecret := fset.String("tsig-secret", "", "TSIG secret (base64)")
	tsigAlgo := fset.String("tsig-algo", "hmac-sha256", "TSIG algorithm")
	dryRun := fset.Bool("dry-run", false, "print the changes only")
	pos, code, ok := parseInterspersed(fset, args)
	if !ok {
		return code
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "sluice dns apply: "+format+"\n", a...)
		return 2
	}
	if len(pos) != 1 || !validLabel(dkim.NormalizeDomain(pos[0]), false) {
		fmt.Fprint(stderr, dnsApplyUsage)
		return 2
	}
	domain := dkim.NormalizeDomain(pos[0])
	if *server == "" {
		return usage("--server HOST:PORT is required (the zone's primary name server)")
	}
	if _, _, err := net.SplitHostPort(*server); err != nil {
		*server = net.JoinHostPort(*server, "53")
	}
	z := dkim.NormalizeDomain(*zone)
	if z == "" || !validLabel(z, false) {
		return usage("--zone ZONE is required (the zone that holds %s's records)", domain)
	}
	algo, ok := tsigAlgos[strings.ToLower(*tsigAlgo)]
	if !ok {
		return usage("--tsig-algo %q: want hmac-sha256, hmac-sha512, hmac-sha384, hmac-sha224 or hmac-sha1", *tsigAlgo)
	}
	if (*tsigName == "") != (*tsigSecret == "") {
		return usage("--tsig-name and --tsig-secret go together")
	}
	if *tsigSecret != "" {
		if _, err := base64.StdEncoding.DecodeString(*tsigSecret); err != nil {
			return usage("--tsig-secret is not base64: %v", err)
		}
	}
	recs, _, code := configRecords(*cfgPath, domain, stderr)
	if code != 0 {
		return code
	}
	for _, r := range recs {
		if !dns.IsSubDomain(dns.Fqdn(z), dns.Fqdn(r.Name)) {
			fmt.Fprintf(stderr, "sluice dns apply: %s is not in zone %s: use the zone that holds it (--zone)\n", r.Name, z)
			return 1
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := dnsx.New(dnsx.Options{Server: *server, CacheSize: -1})
	if err != nil {
		fmt.Fprintln(stderr, "sluice dns apply:", err)
		return 1
	}
	add, del, err := planUpdate(ctx, res, *server, recs)
	if err != nil {
		fmt.Fprintln(stderr, "sluice dns apply:", err)
		return 1
	}
	if len(add)+len(del) == 0 {
		fmt.Fprintf(stdout, "%s: nothing to change: %s holds every record\n", domain, *server)
		return 0
	}
	for _, rr := range del {
		fmt.Fprintf(stdout, "delete %s\n", rrText(rr))
	}
	for _, rr := range add {
		fmt.Fprintf(stdout, "add    %s\n", rrText(rr))
	}
	if *dryRun {
		fmt.Fprintln(stdout, "(dry run: nothing sent)")
		return 0
	}
	m := new(dns.Msg)
	m.SetUpdate(dns.Fqdn(z))
	m.Ns = append(m.Ns, del...)
	m.Insert(add)
	c := &dns.Client{Net: "tcp", Timeout: 30 * time.Second}
	if *tsigName != "" {
		name := dns.Fqdn(strings.ToLower(*tsigName))
		c.TsigSecret = map[string]string{name: *tsigSecret}
		m.SetTsig(name, algo, 300, time.Now().Unix())
	}
	resp, _, err := c.ExchangeContext(ctx, m, *server)
	if msg := updateFailure(resp, err, z, *tsigName); msg != "" {
		fmt.Fprintf(stderr, "sluice dns apply: %s: %s\n", *server, msg)
		return 1
	}
	fmt.Fprintf(stdout, "%s: updated zone %s on %s (%d deleted, %d added)\n", domain, z, *server, len(del), len(add))
	return 0
}

// configRecords are the records `sluice dns records` prints for domain,
// with the configuration they come from: the DKIM records are CNAMEs to
// the DNS listener's zone when sluice.dns_server is set.
func configRecords(cfgPath, domain string, stderr io.Writer) ([]domains.Record, *config.Config, int) {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return nil, nil, 1
	}
	keys, err := configKeys(cfg, domain)
	if err != nil {
		fmt.Fprintln(stderr, "sluice dns:", err)
		return nil, nil, 1
	}
	var sels []string
	for _, k := range keys {
		sels = append(sels, k.Selector)
	}
	recs, err := domains.DelegatedRecords(domain, domains.PolicyOf(cfg), cfg.DNSServer, sels, keys)
	if err != nil {
		fmt.Fprintln(stderr, "sluice dns:", err)
		return nil, nil, 1
	}
	if len(keys) == 0 {
		fmt.Fprintf(stderr, "sluice dns: note: no dkim_sign key for %s in %s (sluice dkim keygen; docs/dkim.md)\n", domain, cfg.File)
	}
	return recs, cfg, 0
}

// planUpdate checks recs against the server and returns the RRs to add
// and the deletions (RFC 2136 section 2.5: class NONE deletes one RR,
// class ANY an RRset or a whole name) that make them verified.
func planUpdate(ctx context.Context, res *dnsx.Client, server string, recs []domains.Record) (add, del []dns.RR, err error) {
	ctx = dnsx.Fresh(ctx)
	for _, st := range domains.Check(ctx, res, recs) {
		switch st.State {
		case domains.Verified:
			continue
		case domains.Unknown:
			return nil, nil, fmt.Errorf("cannot read %s %s: %s", st.Type, st.Name, st.Detail)
		}
		want := st.Fix
		if want == "" {
			want = st.Zone
		}
		rr, err := dns.NewRR(want)
		if err != nil {
			return nil, nil, fmt.Errorf("record %q: %w", want, err)
		}
		name := dns.Fqdn(st.Name)
		switch {
		case st.Kind == domains.KindDKIMCNAME:
			// A CNAME stands alone at its name (RFC 1034 section 3.6.2).
			del = append(del, &dns.ANY{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeANY, Class: dns.ClassANY}})
		case st.Kind == domains.KindDKIM:
			del = append(del, &dns.ANY{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeTXT, Class: dns.ClassANY}})
		case st.Type == "TXT" && len(st.Found) > 0:
			// The wrong SPF or DMARC records only: other TXT records
			// at the name (site verifications) stay.
			have, err := fetchRRs(ctx, server, name, dns.TypeTXT)
			if err != nil {
				return nil, nil, err
			}
			for _, h := range have {
				if slices.Contains(st.Found, strings.Join(h.(*dns.TXT).Txt, "")) {
					h.Header().Class, h.Header().Ttl = dns.ClassNONE, 0
					del = append(del, h)
				}
			}
		}
		add = append(add, rr)
	}
	return add, del, nil
}

// fetchRRs returns the records of type qtype owned by name on server,
// asked over TCP (no truncation), as the server holds them.
func fetchRRs(ctx context.Context, server, name string, qtype uint16) ([]dns.RR, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Net: "tcp", Timeout: 10 * time.Second}
	r, _, err := c.ExchangeContext(ctx, m, server)
	if err != nil {
		return nil, fmt.Errorf("reading %s %s: %w", name, dns.TypeToString[qtype], err)
	}
	var out []dns.RR
	for _, rr := range r.Answer {
		if rr.Header().Rrtype == qtype && strings.EqualFold(rr.Header().Name, name) {
			out = append(out, rr)
		}
	}
	return out, nil
}

// updateFailure explains a failed UPDATE, "" when it succeeded.
func updateFailure(resp *dns.Msg, err error, zone, keyName string) string {
	if resp != nil {
		if t := resp.IsTsig(); t != nil && t.Error != dns.RcodeSuccess {
			switch t.Error {
			case dns.RcodeBadSig:
				return fmt.Sprintf("TSIG BADSIG: the server refused the signature of key %s: wrong --tsig-secret or --tsig-algo", keyName)
			case dns.RcodeBadKey:
				return fmt.Sprintf("TSIG BADKEY: the server does not know key %s (or not with --tsig-algo)", keyName)
			case dns.RcodeBadTime:
				return "TSIG BADTIME: this machine's clock and the server's differ by more than 5 minutes"
			}
			return "TSIG error " + dns.RcodeToString[int(t.Error)]
		}
		switch resp.Rcode {
		case dns.RcodeSuccess:
		case dns.RcodeNotAuth:
			if keyName == "" {
				return fmt.Sprintf("NOTAUTH: the server is not authoritative for %s, or wants a TSIG key (--tsig-name, --tsig-secret)", zone)
			}
			return fmt.Sprintf("NOTAUTH: the server is not authoritative for %s, or does not accept key %s", zone, keyName)
		case dns.RcodeRefused:
			return fmt.Sprintf("REFUSED: the server does not allow updates of %s from this key or address (its allow-update / update-policy)", zone)
		case dns.RcodeNotZone:
			return fmt.Sprintf("NOTZONE: a record is outside zone %s", zone)
		default:
			return "the update failed: " + dns.RcodeToString[resp.Rcode]
		}
	}
	switch {
	case err == nil:
		return ""
	case errors.Is(err, dns.ErrSig):
		return "the answer's TSIG signature does not verify: wrong --tsig-secret or --tsig-algo (the update may not have been applied)"
	}
	return err.Error()
}

// rrText is rr in zone-file form, with the RFC 2136 deletion forms
// spelled out.
func rrText(rr dns.RR) string {
	h := rr.Header()
	switch h.Class {
	case dns.ClassANY:
		if h.Rrtype == dns.TypeANY {
			return strings.TrimSuffix(h.Name, ".") + " (every record)"
		}
		return strings.TrimSuffix(h.Name, ".") + " " + dns.TypeToString[h.Rrtype] + " (every record)"
	case dns.ClassNONE:
		c := dns.Copy(rr)
		c.Header().Class = dns.ClassINET
		return c.String()
	}
	return rr.String()
}
