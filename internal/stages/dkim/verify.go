package dkim

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"

	"github.com/emersion/go-message/textproto"
	msgauth "github.com/emersion/go-msgauth/dkim"
	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/mailtext"
	"github.com/sluice-mta/sluice/internal/stages/inbound"
	"github.com/sluice-mta/sluice/internal/stages/opts"
	"github.com/sluice-mta/sluice/pipeline"
)

// DefaultMaxSignatures is dkim_verify's default cap on the signatures
// verified per message: each costs a DNS lookup and a public-key
// operation, and a message can carry any number of them.
const DefaultMaxSignatures = 5

// Verifier is the dkim_verify stage (on_message). For each DKIM-Signature
// field, top first, up to max_signatures, it adds one "dkim" result to the
// Authentication-Results field (RFC 8601 section 2.7.1): pass, fail
// (the signature or body hash does not match), neutral (signature
// syntax), policy (a body length l= tag, refused: content could be
// appended after signing, RFC 6376 section 8.2), temperror (DNS) or
// permerror (no key, bad key record); "none" when the message has no
// signature. It never rejects: policy is the dmarc stage's or Lua's
// (msg.auth.dkim). Safe for concurrent use.
type Verifier struct {
	inbound.Base
	max int
	res pipeline.Resolver
}

var (
	_ pipeline.MessageHook = (*Verifier)(nil)
	_ pipeline.Provisioner = (*Verifier)(nil)
)

// NewVerifier builds a dkim_verify stage (options: max_signatures,
// check_submissions).
func NewVerifier(name string, m map[string]any) (pipeline.Stage, error) {
	o := opts.New("dkim_verify", m)
	v := &Verifier{Base: inbound.NewBase(name, o), max: DefaultMaxSignatures}
	o.Int("max_signatures", &v.max, 1, 50)
	if err := o.Err(); err != nil {
		return nil, err
	}
	return v, nil
}

// Provision takes the node's resolver.
func (v *Verifier) Provision(env *pipeline.Env) error {
	v.res = env.Resolver
	return v.ProvisionMetrics(env)
}

// OnMessage verifies msg's signatures; mail our own clients submit
// (pipeline.Conn.Submission) is skipped unless check_submissions is set.
func (v *Verifier) OnMessage(ctx context.Context, msg *pipeline.Message) (pipeline.Verdict, error) {
	var verd pipeline.Verdict
	if v.Skip(msg.Conn) {
		return verd, nil
	}
	verd.Edits.AuthResults = Verify(ctx, v.res, &msg.Header, msg.Body, v.max)
	v.Count(verd.Edits.AuthResults)
	return verd, nil
}

// Verify checks the DKIM signatures of the message with header h and
// body, at most max of them (top first), looking keys up through res, and
// returns one "dkim" authentication result per signature considered, or
// a single dkim=none.
func Verify(ctx context.Context, res pipeline.Resolver, h *textproto.Header, body []byte, max int) []pipeline.AuthResult {
	hc := h.Copy()
	var out []pipeline.AuthResult
	var accepted []map[string]string
	n := 0
	fields := hc.FieldsByKey("DKIM-Signature")
	for fields.Next() {
		tags := parseTags(fields.Value())
		if n >= max {
			fields.Del()
			continue
		}
		n++
		if _, ok := tags["l"]; ok {
			out = append(out, result("policy", "body length tag l= not accepted", tags))
			fields.Del()
			continue
		}
		accepted = append(accepted, tags)
	}
	if n == 0 {
		return []pipeline.AuthResult{{Method: "dkim", Result: "none"}}
	}
	if len(accepted) == 0 {
		return out
	}
	var hdr bytes.Buffer
	if err := textproto.WriteHeader(&hdr, hc); err != nil {
		return append(out, pipeline.AuthResult{Method: "dkim", Result: "permerror", Reason: "header cannot be written"})
	}
	// The body is read in place, not copied: it may be megabytes.
	msgReader := io.MultiReader(&hdr, bytes.NewReader(body))
	lookup := func(name string) ([]string, error) {
		txt, _, err := res.LookupTXT(ctx, name)
		if err != nil {
			return nil, dnsx.NetError(name, err)
		}
		return txt, nil
	}
	verifs, err := msgauth.VerifyWithOptions(msgReader, &msgauth.VerifyOptions{LookupTXT: lookup, MaxVerifications: len(accepted)})
	if err != nil && !errors.Is(err, msgauth.ErrTooManySignatures) {
		return append(out, pipeline.AuthResult{Method: "dkim", Result: "permerror", Reason: mailtext.AuthReason(err.Error())})
	}
	for i, vf := range verifs {
		var tags map[string]string
		if i < len(accepted) {
			tags = accepted[i]
		}
		r, reason := "pass", ""
		switch {
		case vf.Err == nil:
		case msgauth.IsTempFail(vf.Err):
			r, reason = "temperror", vf.Err.Error()
		case msgauth.IsPermFail(vf.Err):
			r, reason = "permerror", vf.Err.Error()
		default:
			r, reason = "fail", vf.Err.Error()
		}
		out = append(out, result(r, mailtext.AuthReason(reason), tags))
	}
	return out
}

// result builds a dkim result with header.d, header.s and the first
// characters of header.b (RFC 6008) to tell signatures apart.
func result(r, reason string, tags map[string]string) pipeline.AuthResult {
	a := pipeline.AuthResult{Method: "dkim", Result: r, Reason: reason}
	if d := mailtext.AuthPropValue(tags["d"]); d != "" {
		a.Props = append(a.Props, "header.d="+strings.ToLower(d))
	}
	if s := mailtext.AuthPropValue(tags["s"]); s != "" {
		a.Props = append(a.Props, "header.s="+s)
	}
	if b := mailtext.AuthPropValue(tags["b"]); len(b) >= 8 {
		a.Props = append(a.Props, "header.b="+b[:8])
	}
	return a
}

// parseTags reads a DKIM tag-list (RFC 6376 section 3.2); whitespace in
// values is removed (it is folding in b=, bh=, h=).
func parseTags(v string) map[string]string {
	m := map[string]string{}
	for _, part := range strings.Split(v, ";") {
		k, val, ok := strings.Cut(part, "=")
		if !ok {
			continue
		}
		m[strings.TrimSpace(k)] = strings.Join(strings.Fields(val), "")
	}
	return m
}
