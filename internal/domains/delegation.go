package domains

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"slices"
	"strings"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/dkim"
)

// KindDKIMCNAME is a DKIM selector delegated to Sluice's DNS listener
// (sluice.dns_server): SELECTOR._domainkey.DOMAIN CNAME
// SELECTOR.LABEL.ZONE, published once; keys rotate behind it.
const KindDKIMCNAME = "dkim_cname"

// ZoneLabel is the label that stands for domain under the DNS listener's
// zone: the domain with '-' doubled and '.' made '-' ("customer.example"
// → "customer-example", "my-shop.example" → "my--shop-example"). The
// mapping is one to one: a registered domain's labels neither start nor
// end with '-', so a single '-' is always a dot. A result over 63 octets
// (the longest label, RFC 1035 section 2.3.4) is replaced by "h--" and 32
// base32 characters of the domain's SHA-256, which no domain of two or
// more labels maps to (it has no single '-').
func ZoneLabel(domain string) string {
	domain = dkim.NormalizeDomain(domain)
	l := strings.ReplaceAll(strings.ReplaceAll(domain, "-", "--"), ".", "-")
	if len(l) <= 63 {
		return l
	}
	sum := sha256.Sum256([]byte(domain))
	return "h--" + strings.ToLower(base32.HexEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:20]))
}

// DelegatedName is the name under zone that SELECTOR._domainkey.DOMAIN
// is a CNAME to: SELECTOR.LABEL.ZONE.
func DelegatedName(domain, selector, zone string) string {
	return strings.ToLower(selector) + "." + ZoneLabel(domain) + "." + dkim.NormalizeDomain(zone)
}

// DelegatedRecords is Records with DKIM delegated to the DNS listener d:
// one CNAME per selector of selectors (in place of the DKIM TXT records)
// and a TXT record only for keys under other selectors. d nil is
// Records.
func DelegatedRecords(domain string, p config.Domains, d *config.DNSServer, selectors []string, keys []DKIMKey) ([]Record, error) {
	if d == nil {
		return Records(domain, p, keys)
	}
	var outside []DKIMKey
	for _, k := range keys {
		if !slices.Contains(selectors, k.Selector) {
			outside = append(outside, k)
		}
	}
	recs, err := Records(domain, p, outside)
	if err != nil {
		return nil, err
	}
	// The CNAMEs go where the DKIM records are: after SPF.
	at := 0
	for at < len(recs) && (recs[at].Kind == KindSPF || recs[at].Kind == KindDKIM) {
		at++
	}
	var cn []Record
	for _, s := range selectors {
		name := dkim.RecordName(domain, s)
		target := DelegatedName(domain, s, d.Zone)
		cn = append(cn, Record{Kind: KindDKIMCNAME, Type: "CNAME", Name: name, Value: target, Selector: s,
			Zone: fmt.Sprintf("%s. %d IN CNAME %s.", name, ZoneTTL, target)})
	}
	return slices.Insert(recs, at, cn...), nil
}

// RevokedValue is the TXT record of a revoked key of algorithm algo: the
// key tag with an empty p= (RFC 6376 section 3.6.1: "An empty value means
// that this public key has been revoked").
func RevokedValue(algo string) string {
	if algo == "" {
		algo = dkim.AlgoRSA
	}
	return "v=DKIM1; k=" + algo + "; p="
}
