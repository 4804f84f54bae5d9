// Package dmarc is the dmarc built-in stage (RFC 7489): at on_message it
// finds the policy of the domain in the message's From field (or of its
// organizational domain), checks whether an SPF or DKIM pass recorded by
// earlier stages (spf, dkim_verify, or any stage's authentication
// results) is aligned with that domain, and records dmarc=pass/fail/none/
// temperror/permerror in the Authentication-Results field and the
// disposition the policy asks for (after p=, sp= and pct=) as scratch
// values that Lua reads. With enforce = true it applies the disposition
// itself: reject refuses the message (550 5.7.1), quarantine tags it.
//
// The record parsing is emersion/go-msgauth/dmarc's; the organizational
// domain is the public suffix list's (golang.org/x/net/publicsuffix),
// which is what RFC 7489 section 3.2 asks for. Alignment and the policy
// choice are written here: the library does not do them.
package dmarc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/mail"
	"strings"

	msgdmarc "github.com/emersion/go-msgauth/dmarc"
	"golang.org/x/net/publicsuffix"

	"github.com/sluice-mta/sluice/internal/mailtext"
	"github.com/sluice-mta/sluice/internal/stages/inbound"
	"github.com/sluice-mta/sluice/internal/stages/opts"
	"github.com/sluice-mta/sluice/pipeline"
)

func init() { pipeline.Register("dmarc", New) }

// Scratch keys the stage leaves for later stages (Lua: msg:scratch(k)).
const (
	ScratchPolicy      = "dmarc.policy"      // the policy that applies: none, quarantine, reject ("" without a record)
	ScratchDisposition = "dmarc.disposition" // what to do with this message after pct=: none, quarantine, reject
	ScratchDomain      = "dmarc.domain"      // the From domain
)

// QuarantineTag is the tag an enforcing stage adds to mail to quarantine.
const QuarantineTag = "dmarc-quarantine"

// Stage is the dmarc stage (on_message). Safe for concurrent use.
type Stage struct {
	inbound.Base
	enforce bool
	res     pipeline.Resolver
	rand    func() int // 0..99, for pct=
}

var (
	_ pipeline.MessageHook = (*Stage)(nil)
	_ pipeline.Provisioner = (*Stage)(nil)
)

// New builds a dmarc stage. Options: enforce (default false),
// check_submissions (default false).
func New(name string, m map[string]any) (pipeline.Stage, error) {
	o := opts.New("dmarc", m)
	s := &Stage{Base: inbound.NewBase(name, o), rand: func() int { return rand.IntN(100) }}
	o.Bool("enforce", &s.enforce)
	if err := o.Err(); err != nil {
		return nil, err
	}
	return s, nil
}

// Provision takes the node's resolver.
func (s *Stage) Provision(env *pipeline.Env) error {
	s.res = env.Resolver
	return s.ProvisionMetrics(env)
}

// Result is a DMARC evaluation.
type Result struct {
	Result      string // pass, fail, none, temperror, permerror
	Domain      string // the From domain
	Policy      string // the applicable p= or sp=; "" without a record
	Disposition string // none, quarantine or reject, after pct=
	Reason      string
}

// OnMessage evaluates msg and records the result; mail our own clients
// submit (pipeline.Conn.Submission) is skipped unless check_submissions
// is set: it is not signed yet, and its domain's policy would refuse it.
func (s *Stage) OnMessage(ctx context.Context, msg *pipeline.Message) (pipeline.Verdict, error) {
	var v pipeline.Verdict
	if s.Skip(msg.Conn) {
		return v, nil
	}
	r := s.Evaluate(ctx, msg)
	a := pipeline.AuthResult{Method: "dmarc", Result: r.Result, Reason: r.Reason}
	if r.Domain != "" {
		a.Props = []string{"header.from=" + r.Domain}
	}
	v.Edits.AuthResults = []pipeline.AuthResult{a}
	s.Count(v.Edits.AuthResults)
	v.Edits.SetScratch(ScratchDomain, r.Domain)
	v.Edits.SetScratch(ScratchPolicy, r.Policy)
	v.Edits.SetScratch(ScratchDisposition, r.Disposition)
	if s.enforce {
		switch r.Disposition {
		case "reject":
			return pipeline.RejectVerdict(550, pipeline.EnhancedCode{5, 7, 1},
				"Rejected by the DMARC policy of "+r.Domain), nil
		case "quarantine":
			v.Edits.AddTag(QuarantineTag)
		}
	}
	return v, nil
}

// Evaluate runs RFC 7489 section 6.6 over msg: the From domain, its
// policy record (or the organizational domain's), and the alignment of
// the SPF and DKIM passes in msg.AuthResults.
func (s *Stage) Evaluate(ctx context.Context, msg *pipeline.Message) Result {
	froms := msg.Header.Values("From")
	if len(froms) != 1 {
		return Result{Result: "permerror", Disposition: "none", Reason: fmt.Sprintf("%d From fields (RFC 5322 requires one)", len(froms))}
	}
	addrs, err := mail.ParseAddressList(froms[0])
	if err != nil || len(addrs) != 1 {
		return Result{Result: "permerror", Disposition: "none", Reason: "From must hold exactly one address"}
	}
	_, domain, err := pipeline.SplitAddress(addrs[0].Address)
	if err != nil {
		return Result{Result: "permerror", Disposition: "none", Reason: "From address is not valid"}
	}
	r := Result{Domain: domain, Disposition: "none"}
	org := OrgDomain(domain)
	rec, err := s.lookup(ctx, domain)
	sub := false
	if errors.Is(err, msgdmarc.ErrNoPolicy) && org != domain {
		rec, err = s.lookup(ctx, org)
		sub = true
	}
	switch {
	case errors.Is(err, msgdmarc.ErrNoPolicy):
		r.Result = "none"
		return r
	case errors.Is(err, errSeveralRecords):
		r.Result, r.Reason = "none", "several DMARC records"
		return r
	case msgdmarc.IsTempFail(err):
		r.Result, r.Reason = "temperror", "policy lookup failed"
		return r
	case err != nil:
		r.Result, r.Reason = "permerror", "policy record: "+mailtext.AuthReason(err.Error())
		return r
	}
	r.Policy = string(rec.Policy)
	if sub && rec.SubdomainPolicy != "" {
		r.Policy = string(rec.SubdomainPolicy)
	}
	if s.aligned(msg, domain, org, rec) {
		r.Result = "pass"
		return r
	}
	r.Result = "fail"
	r.Disposition = r.Policy
	if rec.Percent != nil && *rec.Percent < 100 && s.rand() >= *rec.Percent {
		// Not sampled: one step milder (RFC 7489 section 6.6.4).
		switch r.Disposition {
		case "reject":
			r.Disposition = "quarantine"
		case "quarantine":
			r.Disposition = "none"
		}
	}
	r.Reason = "policy " + r.Policy + ", disposition " + r.Disposition
	return r
}

// errSeveralRecords: _dmarc.DOMAIN holds more than one v=DMARC1 record.
// RFC 7489 section 6.6.3 step 5: policy discovery ends there and DMARC is
// not applied (no fallback to the organizational domain either). The
// library would take the first record, in whatever order DNS returned
// them.
var errSeveralRecords = errors.New("dmarc: several DMARC records")

// lookup asks for _dmarc.domain through the node's resolver.
func (s *Stage) lookup(ctx context.Context, domain string) (*msgdmarc.Record, error) {
	several := false
	rec, err := msgdmarc.LookupWithOptions(domain, &msgdmarc.LookupOptions{LookupTXT: func(name string) ([]string, error) {
		txt, _, err := s.res.LookupTXT(ctx, name)
		if errors.Is(err, pipeline.ErrDNSNotFound) {
			return nil, nil // no record: ErrNoPolicy
		}
		if err != nil {
			return nil, tempErr{err}
		}
		n := 0
		out := make([]string, 0, len(txt))
		for _, t := range txt {
			if norm, ok := normalizeDMARC1(t); ok {
				n++
				t = norm
			}
			out = append(out, t)
		}
		if n > 1 {
			several = true
			return nil, nil
		}
		return out, nil
	}})
	if several {
		return nil, errSeveralRecords
	}
	return rec, err
}

// caseInsensitive are the tags whose values RFC 7489 section 6.4 defines
// with ABNF quoted strings ("reject", "r", "afrf"...), which are
// case-insensitive (RFC 5234 section 2.3).
var caseInsensitive = map[string]bool{"p": true, "sp": true, "adkim": true, "aspf": true, "fo": true, "rf": true}

// normalizeDMARC1 reports whether a TXT record is a DMARC record: its
// first tag is v (the name in any case, spaces allowed around '=') with
// the value exactly "DMARC1" (RFC 7489 section 6.4: dmarc-version is
// %x44 %x4d %x41 %x52 %x43 %x31, case-sensitive; section 6.3: "MUST
// match precisely"); other records are discarded (section 6.6.3 step 4).
// For a DMARC record it also returns it with tag names, and the values
// of the tags in caseInsensitive, in lower case, as the library expects:
// "V=DMARC1; P=REJECT" is "v=DMARC1; p=reject". Other values (rua=
// URIs, pct=) are kept as they are.
func normalizeDMARC1(t string) (string, bool) {
	parts := strings.Split(t, ";")
	k, v, ok := strings.Cut(parts[0], "=")
	if !ok || !strings.EqualFold(strings.TrimSpace(k), "v") || strings.TrimSpace(v) != "DMARC1" {
		return "", false
	}
	for i, p := range parts {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			continue // empty, or malformed: the library judges it
		}
		k = strings.ToLower(strings.TrimSpace(k))
		if caseInsensitive[k] {
			v = strings.ToLower(v)
		}
		parts[i] = k + "=" + v
	}
	return strings.Join(parts, ";"), true
}

// tempErr is a net.Error whose Temporary is true, as the library expects.
type tempErr struct{ error }

func (tempErr) Timeout() bool   { return false }
func (tempErr) Temporary() bool { return true }

// aligned reports whether an SPF or DKIM pass in msg's results is aligned
// with the From domain (RFC 7489 section 3.1): the same domain in strict
// mode, the same organizational domain in relaxed mode (the default).
func (s *Stage) aligned(msg *pipeline.Message, domain, org string, rec *msgdmarc.Record) bool {
	match := func(d string, mode msgdmarc.AlignmentMode) bool {
		d = strings.ToLower(strings.TrimSuffix(d, "."))
		if mode == msgdmarc.AlignmentStrict {
			return d == domain
		}
		return d != "" && OrgDomain(d) == org
	}
	for _, a := range msg.AuthResults {
		if a.Result != "pass" {
			continue
		}
		switch a.Method {
		case "spf":
			if d := prop(a, "smtp.mailfrom"); d != "" && match(d, rec.SPFAlignment) {
				return true
			}
		case "dkim":
			if d := prop(a, "header.d"); match(d, rec.DKIMAlignment) {
				return true
			}
		}
	}
	return false
}

// prop returns the domain of property name in a ("local@domain" → domain).
func prop(a pipeline.AuthResult, name string) string {
	for _, p := range a.Props {
		if v, ok := strings.CutPrefix(p, name+"="); ok {
			if i := strings.LastIndexByte(v, '@'); i >= 0 {
				v = v[i+1:]
			}
			return v
		}
	}
	return ""
}

// OrgDomain is domain's organizational domain (RFC 7489 section 3.2):
// one label below its public suffix.
func OrgDomain(domain string) string {
	if d, err := publicsuffix.EffectiveTLDPlusOne(domain); err == nil {
		return d
	}
	return domain
}
