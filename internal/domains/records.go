// Package domains is what a sending domain must publish in DNS for mail
// Sluice sends on its behalf to authenticate (SPF, RFC 7208; DKIM, RFC
// 6376; DMARC, RFC 7489; a return-path MX), and the check of those records
// against live DNS: each one verified, missing or wrong, with the exact
// record to publish as the fix. `sluice dns records|check` and the
// /v1/domains API (registered domains, persisted in the spool) share it.
//
// The record logic is written here rather than taken from an SPF or DMARC
// library because it is not evaluation (blitiri.com.ar/go/spf and
// go-msgauth/dmarc judge a message): it compares published text with what
// this relay needs and builds the corrected record.
package domains

import (
	"crypto"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/dkim"
)

// Record kinds.
const (
	KindSPF           = "spf"
	KindDKIM          = "dkim"
	KindDMARC         = "dmarc"
	KindReturnPath    = "return_path"     // MX of the return-path domain
	KindReturnPathSPF = "return_path_spf" // SPF of the return-path domain
)

// Record is one DNS record a sending domain must publish. Value is the
// whole TXT value (unsplit) or, for MX, the exchange host.
type Record struct {
	Kind     string `json:"kind"`
	Type     string `json:"type"` // "TXT" or "MX"
	Name     string `json:"name"` // without the trailing dot
	Value    string `json:"value"`
	Selector string `json:"selector,omitempty"` // DKIM only
	// Zone is the record in zone-file form, TXT values split into strings
	// of at most 255 octets (RFC 1035 section 3.3.14).
	Zone string `json:"zone"`
}

// DKIMKey is the public half of a key to publish.
type DKIMKey struct {
	Selector string
	Signer   crypto.Signer
}

// ZoneTTL is the TTL written in the zone-file form of records.
const ZoneTTL = 3600

// Records returns the records domain needs under policy p: SPF (when
// p names an include or egress addresses), one DKIM TXT per key, DMARC,
// and the return-path MX and SPF when p.ReturnPathMX is set. Keys whose
// public half cannot be encoded are an error.
func Records(domain string, p config.Domains, keys []DKIMKey) ([]Record, error) {
	domain = dkim.NormalizeDomain(domain)
	var out []Record
	spf := spfMechanisms(p)
	if len(spf) > 0 {
		out = append(out, txt(KindSPF, domain, "v=spf1 "+strings.Join(spf, " ")+" ~all"))
	}
	for _, k := range keys {
		v, err := dkim.RecordValue(k.Signer)
		if err != nil {
			return nil, fmt.Errorf("dkim key %s: %w", k.Selector, err)
		}
		r := txt(KindDKIM, dkim.RecordName(domain, k.Selector), v)
		r.Selector = k.Selector
		out = append(out, r)
	}
	dmarc := p.DMARC
	if dmarc == "" {
		dmarc = config.DefaultDomains().DMARC
	}
	out = append(out, txt(KindDMARC, "_dmarc."+domain, dmarc))
	if p.ReturnPathMX != "" {
		label := p.ReturnPathLabel
		if label == "" {
			label = config.DefaultDomains().ReturnPathLabel
		}
		name := label + "." + domain
		mx := dkim.NormalizeDomain(p.ReturnPathMX)
		out = append(out, Record{Kind: KindReturnPath, Type: "MX", Name: name, Value: mx,
			Zone: fmt.Sprintf("%s. %d IN MX 10 %s.", name, ZoneTTL, mx)})
		if len(spf) > 0 {
			out = append(out, txt(KindReturnPathSPF, name, "v=spf1 "+strings.Join(spf, " ")+" ~all"))
		}
	}
	return out, nil
}

// ReturnPathDomain is the return-path domain of domain under p, or "".
func ReturnPathDomain(domain string, p config.Domains) string {
	if p.ReturnPathMX == "" {
		return ""
	}
	label := p.ReturnPathLabel
	if label == "" {
		label = config.DefaultDomains().ReturnPathLabel
	}
	return label + "." + dkim.NormalizeDomain(domain)
}

func spfMechanisms(p config.Domains) []string {
	var m []string
	if p.SPFInclude != "" {
		m = append(m, "include:"+dkim.NormalizeDomain(p.SPFInclude))
	}
	ips := append(p.SPFIPs[:0:0], p.SPFIPs...)
	sort.Slice(ips, func(i, j int) bool { return ips[i].String() < ips[j].String() })
	for _, ip := range ips {
		kind, s := "ip4:", ip.String()
		if ip.Addr().Is6() {
			kind = "ip6:"
		}
		if ip.IsSingleIP() {
			s = ip.Addr().String()
		}
		m = append(m, kind+s)
	}
	return m
}

func txt(kind, name, value string) Record {
	return Record{Kind: kind, Type: "TXT", Name: name, Value: value, Zone: zoneTXT(name, value)}
}

func zoneTXT(name, value string) string {
	parts := dkim.SplitTXT(value)
	for i, p := range parts {
		parts[i] = `"` + strings.ReplaceAll(strings.ReplaceAll(p, `\`, `\\`), `"`, `\"`) + `"`
	}
	return fmt.Sprintf("%s. %d IN TXT %s", name, ZoneTTL, strings.Join(parts, " "))
}

// PolicyOf returns cfg's sluice.domains policy, with SPFIPs taken from
// the egress sources' addresses (sluice.egress) when sluice.domains names
// neither spf_include nor spf_ips: the addresses this node sends from.
func PolicyOf(cfg *config.Config) config.Domains {
	p := cfg.Domains
	if p.SPFInclude != "" || len(p.SPFIPs) > 0 || cfg.Egress == nil {
		return p
	}
	for _, s := range cfg.Egress.Sources {
		if s.Address.IsValid() {
			a := s.Address.Unmap()
			p.SPFIPs = append(p.SPFIPs, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return p
}
