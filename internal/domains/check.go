package domains

import (
	"context"
	"slices"
	"strings"

	"github.com/sluice-mta/sluice/internal/dkim"
	"github.com/sluice-mta/sluice/internal/dnsx"
)

// States of a checked record.
const (
	Verified = "verified" // published as needed
	Missing  = "missing"  // nothing (or no record of this kind) at the name
	Wrong    = "wrong"    // a record of this kind that does not do the job
	Unknown  = "unknown"  // DNS gave no answer (a temporary failure): check again
)

// Status is a Record checked against DNS. Fix, when State is not
// Verified, is the record to publish instead, in zone-file form (for a
// wrong SPF record, the published one with the missing mechanisms added).
type Status struct {
	Record
	State  string   `json:"state,omitempty"` // "" when not checked
	Found  []string `json:"found,omitempty"` // the records of this kind published now
	Detail string   `json:"detail,omitempty"`
	Fix    string   `json:"fix,omitempty"`
}

// OK reports whether every status is Verified.
func OK(st []Status) bool {
	for _, s := range st {
		if s.State != Verified {
			return false
		}
	}
	return true
}

// Check looks every record up through r and judges it. It never fails as
// a whole: a lookup that fails temporarily makes that record Unknown.
// Safe for concurrent use when r is.
func Check(ctx context.Context, r dnsx.Resolver, recs []Record) []Status {
	out := make([]Status, 0, len(recs))
	for _, rec := range recs {
		out = append(out, checkOne(ctx, r, rec))
	}
	return out
}

func checkOne(ctx context.Context, r dnsx.Resolver, rec Record) Status {
	st := Status{Record: rec}
	if rec.Type == "CNAME" {
		checkCNAME(ctx, r, &st)
		return st
	}
	if rec.Type == "MX" {
		res, err := r.LookupMX(ctx, rec.Name)
		if lookupFailed(&st, err) {
			return st
		}
		for _, mx := range res.Records {
			st.Found = append(st.Found, mx.Host)
			if mx.Host == rec.Value {
				st.State = Verified
			}
		}
		if st.State == "" {
			st.State, st.Detail, st.Fix = Wrong, "no MX record points to "+rec.Value, rec.Zone
		}
		return st
	}
	res, err := r.LookupTXT(ctx, rec.Name)
	if lookupFailed(&st, err) {
		return st
	}
	switch rec.Kind {
	case KindSPF, KindReturnPathSPF:
		checkSPF(&st, res.Records)
	case KindDKIM:
		checkDKIM(&st, res.Records)
	case KindDMARC:
		checkDMARC(&st, res.Records)
	}
	return st
}

// checkCNAME: the name is an alias of the record's target. Another
// record there (a DKIM TXT published before delegation) is wrong: a CNAME
// cannot sit beside other data (RFC 1034 section 3.6.2), remove it.
func checkCNAME(ctx context.Context, r dnsx.Resolver, st *Status) {
	cr, ok := r.(dnsx.CNAMEResolver)
	if !ok {
		st.State, st.Detail = Unknown, "the resolver cannot look CNAME records up"
		return
	}
	res, err := cr.LookupCNAME(ctx, st.Name)
	if err != nil && dnsx.IsNoData(err) {
		// The name exists without a CNAME: say what is there.
		if txt, terr := r.LookupTXT(ctx, st.Name); terr == nil {
			st.State, st.Found, st.Fix = Wrong, txt.Records, st.Zone
			st.Detail = "TXT records are published at " + st.Name + ": remove them and publish the CNAME"
			return
		}
	}
	if lookupFailed(st, err) {
		return
	}
	st.Found = res.Records
	for _, t := range res.Records {
		if t == st.Value {
			st.State = Verified
			return
		}
	}
	st.State, st.Detail, st.Fix = Wrong, "the CNAME points elsewhere, not to "+st.Value, st.Zone
}

// lookupFailed sets Missing or Unknown for a failed lookup.
func lookupFailed(st *Status, err error) bool {
	switch {
	case err == nil:
		return false
	case dnsx.IsNotFound(err) || dnsx.IsNoData(err):
		st.State, st.Detail, st.Fix = Missing, "no "+st.Type+" record at "+st.Name, st.Zone
	default:
		st.State, st.Detail = Unknown, err.Error()
	}
	return true
}

// hasVersion reports whether a TXT value starts with tag (v=spf1, v=DKIM1,
// v=DMARC1), case-insensitively, followed by the end, a space or ';'.
func hasVersion(v, tag string) bool {
	if len(v) < len(tag) || !strings.EqualFold(v[:len(tag)], tag) {
		return false
	}
	return len(v) == len(tag) || v[len(tag)] == ' ' || v[len(tag)] == ';'
}

// checkSPF: exactly one v=spf1 record (RFC 7208 section 4.5: more is a
// permerror) holding every mechanism of the wanted record.
func checkSPF(st *Status, txts []string) {
	var spf []string
	for _, t := range txts {
		if hasVersion(t, "v=spf1") {
			spf = append(spf, t)
		}
	}
	st.Found = spf
	switch len(spf) {
	case 0:
		st.State, st.Detail, st.Fix = Missing, "no v=spf1 record at "+st.Name, st.Zone
		return
	case 1:
	default:
		st.State, st.Detail = Wrong, "several v=spf1 records (RFC 7208 section 4.5: a permerror); publish one"
		st.Fix = zoneTXT(st.Name, mergeSPF(spf[0], st.Value))
		return
	}
	merged := mergeSPF(spf[0], st.Value)
	if strings.EqualFold(merged, spf[0]) {
		st.State = Verified
		return
	}
	st.State, st.Detail = Wrong, "the v=spf1 record lacks this relay's mechanisms"
	st.Fix = zoneTXT(st.Name, merged)
}

// mergeSPF adds to have the mechanisms of want that it lacks, before its
// all or redirect= term. A mechanism after all is lacking: it is never
// evaluated (RFC 7208 section 5.1). Names compare case-insensitively and
// without a trailing dot.
func mergeSPF(have, want string) string {
	terms := strings.Fields(have)
	present := map[string]bool{}
	for _, t := range terms {
		if strings.EqualFold(strings.TrimLeft(t, "+-~?"), "all") {
			break
		}
		present[spfTermKey(strings.TrimLeft(t, "+"))] = true
	}
	var add []string
	for _, t := range strings.Fields(want)[1:] {
		if !strings.HasSuffix(t, "all") && !present[spfTermKey(t)] {
			add = append(add, t)
		}
	}
	if len(add) == 0 {
		return have
	}
	at := len(terms)
	for i, t := range terms {
		l := strings.ToLower(strings.TrimLeft(t, "+-~?"))
		if l == "all" || strings.HasPrefix(l, "redirect=") {
			at = i
			break
		}
	}
	out := append(append(append([]string{}, terms[:at]...), add...), terms[at:]...)
	return strings.Join(out, " ")
}

// spfTermKey is an SPF term as mergeSPF compares it: lower case, without
// a trailing dot on its domain (RFC 7208 section 7.1's domain-end allows
// one).
func spfTermKey(t string) string {
	return strings.TrimSuffix(strings.ToLower(t), ".")
}

// checkDKIM: a key record whose p= is ours (whitespace ignored, RFC 6376
// section 3.6.2.2).
func checkDKIM(st *Status, txts []string) {
	want := tag(st.Value, "p")
	st.Found = txts
	for _, t := range txts {
		if tag(t, "p") == want {
			st.State = Verified
			return
		}
	}
	st.State, st.Detail, st.Fix = Wrong, "the published key is not this relay's key for selector "+st.Selector, st.Zone
}

// checkDMARC: exactly one v=DMARC1 record with a p= tag (RFC 7489 section
// 6.6.3). The domain's own policy is kept: any p= is verified.
func checkDMARC(st *Status, txts []string) {
	var rec []string
	for _, t := range txts {
		if isDMARC1(t) {
			rec = append(rec, t)
		}
	}
	st.Found = rec
	switch {
	case len(rec) == 0:
		st.State, st.Detail, st.Fix = Missing, "no v=DMARC1 record at "+st.Name, st.Zone
	case len(rec) > 1:
		st.State, st.Detail, st.Fix = Wrong, "several v=DMARC1 records (RFC 7489 section 6.6.3: none applies); publish one", st.Zone
	case !slices.Contains([]string{"none", "quarantine", "reject"}, strings.ToLower(tagFold(rec[0], "p"))):
		st.State, st.Detail, st.Fix = Wrong, "the v=DMARC1 record has no p= policy (none, quarantine or reject)", st.Zone
	default:
		st.State = Verified
	}
}

// isDMARC1: the first tag is v, its name in any case, with the value
// exactly DMARC1 (RFC 7489 sections 6.3 and 6.4: tag names and keyword
// values are case-insensitive ABNF strings, the version is %x44 %x4d %x41
// %x52 %x43 %x31 and "MUST match precisely").
func isDMARC1(t string) bool {
	first, _, _ := strings.Cut(t, ";")
	k, v, ok := strings.Cut(first, "=")
	return ok && strings.EqualFold(strings.TrimSpace(k), "v") && strings.TrimSpace(v) == "DMARC1"
}

// tagFold is tag with the name compared case-insensitively (DMARC; DKIM
// tag names are case-sensitive, RFC 6376 section 3.2).
func tagFold(list, name string) string {
	for _, kv := range strings.Split(list, ";") {
		k, v, ok := strings.Cut(kv, "=")
		if ok && strings.EqualFold(strings.TrimSpace(k), name) {
			return strings.Join(strings.Fields(v), "")
		}
	}
	return ""
}

// tag returns the value of tag name in a tag=value; list (RFC 6376
// section 3.2), whitespace removed, or "".
func tag(list, name string) string {
	for _, kv := range strings.Split(list, ";") {
		k, v, ok := strings.Cut(kv, "=")
		if ok && strings.TrimSpace(k) == name {
			return strings.Join(strings.Fields(v), "")
		}
	}
	return ""
}

// KeysOf returns the DKIMKey form of loaded keys of domain.
func KeysOf(keys []*dkim.Key, domain string) []DKIMKey {
	var out []DKIMKey
	for _, k := range keys {
		if k.Domain == dkim.NormalizeDomain(domain) {
			out = append(out, DKIMKey{Selector: k.Selector, Signer: k.Signer})
		}
	}
	return out
}
