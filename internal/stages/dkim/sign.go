// Package dkim holds the DKIM built-in stages: dkim_sign (RFC 6376 and
// RFC 8463 signatures on mail Sluice sends, including the DSNs it
// generates) and dkim_verify (checking the signatures of mail received as
// an MX). Keys, signing and record text live in internal/dkim; signing
// hashes there directly (Go's crypto signs), verifying is
// emersion/go-msgauth's.
package dkim

import (
	"context"
	"fmt"
	"log/slog"
	"net/mail"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sluice-mta/sluice/internal/dkim"
	"github.com/sluice-mta/sluice/internal/logx"
	"github.com/sluice-mta/sluice/internal/metrics"
	"github.com/sluice-mta/sluice/internal/stages/opts"
	"github.com/sluice-mta/sluice/pipeline"
)

// Scratch keys a Lua (or plugin) stage sets at on_mail, on_rcpt or
// on_message to steer signing (msg:set_scratch("dkim.domain", "example.com")).
const (
	ScratchDomain   = "dkim.domain"   // sign with this domain's keys instead of the From domain's
	ScratchSelector = "dkim.selector" // sign only with the key of this selector
	ScratchSkip     = "dkim.skip"     // "yes": do not sign this message
)

func init() {
	pipeline.Register("dkim_sign", NewSigner)
	pipeline.Register("dkim_verify", NewVerifier)
}

// Signer is the dkim_sign stage. It signs in the chain's sign step
// (pipeline.SignHook), after every on_message stage and the
// Authentication-Results field, so the signature covers the header and
// body exactly as spooled. Safe for concurrent use.
type Signer struct {
	name    string
	specs   []dkim.KeySpec
	sign    dkim.Options
	bounce  string // domain whose keys sign DSNs; "" = the DSN's From domain
	deflt   string // domain for mail whose From domain has no key
	onError string // "tempfail" or "continue"
	// signReceived (sign_received): also sign mail received as an MX,
	// not only what this node's own clients submit (Conn.Submission).
	signReceived bool

	keys    *dkim.Store
	log     *slog.Logger
	sampler *logx.Sampler
	signed  *prometheus.CounterVec // sluice_dkim_signatures_total{algo}
	errs    *prometheus.CounterVec // sluice_dkim_sign_errors_total{reason}
}

var (
	_ pipeline.SignHook    = (*Signer)(nil)
	_ pipeline.Provisioner = (*Signer)(nil)
	_ pipeline.Validator   = (*Signer)(nil)
)

// NewSigner builds a dkim_sign stage from its options (docs/dkim.md).
func NewSigner(name string, m map[string]any) (pipeline.Stage, error) {
	s := &Signer{name: name, onError: "tempfail", keys: &dkim.Store{}}
	o := opts.New("dkim_sign", m)
	var one dkim.KeySpec
	o.String("domain", &one.Domain)
	o.String("selector", &one.Selector)
	o.String("key", &one.File)
	if one != (dkim.KeySpec{}) {
		s.specs = append(s.specs, one)
	}
	for _, t := range o.Tables("keys") {
		var k dkim.KeySpec
		t.String("domain", &k.Domain)
		t.String("selector", &k.Selector)
		t.String("key", &k.File)
		if err := t.Err(); err != nil {
			return nil, err
		}
		s.specs = append(s.specs, k)
	}
	o.Strings("headers", &s.sign.Headers)
	o.Strings("oversign", &s.sign.Oversign)
	if s.sign.Oversign == nil && o.Has("oversign") {
		s.sign.Oversign = []string{}
	}
	for key, names := range map[string][]string{"headers": s.sign.Headers, "oversign": s.sign.Oversign} {
		for _, n := range names {
			if !isFieldName(n) {
				o.Fail(key, "%q is not a header field name (printable ASCII without spaces or ':', RFC 5322 section 3.6.8)", n)
			}
		}
	}
	c := "relaxed/relaxed"
	if o.String("canonicalization", &c) {
		hc, bc, ok := strings.Cut(c, "/")
		if !ok {
			bc = "simple" // RFC 6376 section 3.5: c=relaxed means relaxed/simple
		}
		s.sign.HeaderCanon, s.sign.BodyCanon = hc, bc
		if err := s.sign.Check(); err != nil {
			o.Fail("canonicalization", "%v", err)
		}
	}
	o.Duration("expiration", &s.sign.Expiration)
	o.String("bounce_domain", &s.bounce)
	o.String("default_domain", &s.deflt)
	o.Bool("sign_received", &s.signReceived)
	if o.String("on_error", &s.onError) && s.onError != "tempfail" && s.onError != "continue" {
		o.Fail("on_error", "want \"tempfail\" or \"continue\", got %q", s.onError)
	}
	if err := o.Err(); err != nil {
		return nil, err
	}
	if len(s.specs) == 0 && !o.Has("keys") {
		// keys = {} says "only the sending domains registered through
		// the HTTP API" (docs/domains.md); no keys at all is a mistake.
		return nil, fmt.Errorf("sluice.builtin.dkim_sign: no keys: give domain, selector and key, or keys = { { domain =, selector =, key = }, ... } (keys = {} signs only domains registered through /v1/domains)")
	}
	if s.sign.Headers != nil && !containsFold(s.sign.Headers, "From") {
		s.sign.Headers = append([]string{"From"}, s.sign.Headers...)
	}
	s.bounce, s.deflt = dkim.NormalizeDomain(s.bounce), dkim.NormalizeDomain(s.deflt)
	return s, nil
}

// isFieldName reports whether n is an RFC 5322 field-name (1*ftext,
// section 3.6.8): written into h= as is, a space or a colon would make the
// DKIM-Signature field malformed or name another field.
func isFieldName(n string) bool {
	if n == "" {
		return false
	}
	for i := 0; i < len(n); i++ {
		if c := n[i]; c < 33 || c > 126 || c == ':' {
			return false
		}
	}
	return true
}

func containsFold(l []string, s string) bool {
	for _, x := range l {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

// Name implements pipeline.Stage.
func (s *Signer) Name() string { return s.name }

// Provision reads the key files (relative to the configuration file),
// once: a reload builds a new stage and reads them again.
func (s *Signer) Provision(env *pipeline.Env) error {
	s.log = env.Logger
	s.sampler = logx.NewSampler(time.Minute)
	var err error
	if s.signed, err = metrics.RegisterOnce(env.Metrics, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_dkim_signatures_total",
		Help: "DKIM signatures made by dkim_sign stages, by key algorithm (rsa, ed25519).",
	}, []string{"algo"})); err != nil {
		return err
	}
	if s.errs, err = metrics.RegisterOnce(env.Metrics, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_dkim_sign_errors_total",
		Help: "Messages dkim_sign could not sign, by reason: no_key (a Lua-chosen domain or selector without a key), sign_failed, no_header_end (sent unsigned).",
	}, []string{"reason"})); err != nil {
		return err
	}
	specs := make([]dkim.KeySpec, len(s.specs))
	for i, k := range s.specs {
		if k.File != "" && !filepath.IsAbs(k.File) && env.ConfigDir != "" {
			k.File = filepath.Join(env.ConfigDir, k.File)
		}
		specs[i] = k
	}
	keys, err := dkim.Load(specs)
	if err != nil {
		return fmt.Errorf("sluice.builtin.dkim_sign: %w", err)
	}
	s.keys.Swap(keys)
	return nil
}

// Validate checks that bounce_domain and default_domain have keys.
func (s *Signer) Validate() error {
	for opt, d := range map[string]string{"bounce_domain": s.bounce, "default_domain": s.deflt} {
		if d != "" && len(s.keys.Keys(d)) == 0 {
			have := s.keys.Domains()
			if len(have) == 0 {
				return fmt.Errorf("sluice.builtin.dkim_sign: %s %q has no key: keys lists none (give it one in keys)", opt, d)
			}
			return fmt.Errorf("sluice.builtin.dkim_sign: %s %q has no key (keys are for %s)", opt, d, strings.Join(have, ", "))
		}
	}
	return nil
}

// Keys is the stage's key table: a rotation may Swap it while serving.
func (s *Signer) Keys() *dkim.Store { return s.keys }

// Sign implements pipeline.SignHook: it prepends one DKIM-Signature field
// per key of the chosen domain (see choose).
func (s *Signer) Sign(ctx context.Context, msg *pipeline.Message) error {
	keys, why := s.choose(msg)
	if len(keys) > 0 && !msg.HeaderEnded() {
		// No empty line ends the header: no verifier could find the
		// header this would sign. Sent unsigned, as without this stage;
		// refusing it would only make the client retry forever.
		s.errs.WithLabelValues("no_header_end").Inc()
		if ok, n := s.sampler.Allow("no header end"); ok {
			s.log.Warn("sending unsigned: the message has no empty line after its header", "msgid", msg.ID, "suppressed", n)
		}
		return nil
	}
	if len(keys) == 0 {
		if why != "" {
			s.errs.WithLabelValues("no_key").Inc()
			return s.failed(msg, why, nil)
		}
		return nil
	}
	fields, err := dkim.Sign(keys, &s.sign, &msg.Header, msg.Body)
	if err != nil {
		s.errs.WithLabelValues("sign_failed").Inc()
		return s.failed(msg, "signing failed", err)
	}
	for _, k := range keys {
		s.signed.WithLabelValues(k.Algo).Inc()
	}
	// Prepend in reverse so the first key's signature ends on top.
	for i := len(fields) - 1; i >= 0; i-- {
		msg.Header.AddRaw([]byte(fields[i]))
	}
	return nil
}

// choose picks the keys for msg: the Lua override (scratch dkim.domain,
// dkim.selector), else bounce_domain for DSNs, else the From domain, else
// default_domain. No keys and why == "" means "leave unsigned". Mail
// received as an MX (not a submission, pipeline.Conn.Submission) is left
// unsigned without sign_received or a Lua override: whoever connects to
// the MX must not get any From of ours signed.
func (s *Signer) choose(msg *pipeline.Message) (keys []*dkim.Key, why string) {
	if v := msg.Scratch[ScratchSkip]; v == "yes" || v == "true" || v == "1" {
		return nil, ""
	}
	domain, explicit := msg.Scratch[ScratchDomain], true
	if domain == "" && !s.signReceived && msg.Conn != nil && !msg.Conn.Submission() {
		return nil, ""
	}
	if domain == "" {
		explicit = false
		if msg.Conn != nil && msg.Conn.Source == pipeline.SourceDSN && s.bounce != "" {
			domain = s.bounce
		} else {
			domain = fromDomain(msg)
		}
	}
	tenant := ""
	if msg.Conn != nil {
		tenant = msg.Conn.Tenant()
	}
	// A registered domain's key signs only its tenant's mail.
	keys = dkim.ForTenant(s.keys.Keys(domain), tenant)
	if len(keys) == 0 && !explicit && s.deflt != "" {
		keys = dkim.ForTenant(s.keys.Keys(s.deflt), tenant)
	}
	if sel := msg.Scratch[ScratchSelector]; sel != "" {
		var pick []*dkim.Key
		for _, k := range keys {
			if k.Selector == sel {
				pick = append(pick, k)
			}
		}
		if len(pick) == 0 {
			return nil, fmt.Sprintf("no DKIM key for selector %q of domain %q (scratch %s)", sel, domain, ScratchSelector)
		}
		keys = pick
	}
	if len(keys) == 0 && explicit {
		return nil, fmt.Sprintf("no DKIM key for domain %q (scratch %s)", domain, ScratchDomain)
	}
	return keys, ""
}

// fromDomain is the domain of the first From address, lower-case, or "".
func fromDomain(msg *pipeline.Message) string {
	from := msg.Header.Get("From")
	if from == "" {
		return ""
	}
	addrs, err := mail.ParseAddressList(from)
	if err != nil || len(addrs) == 0 {
		return ""
	}
	_, d, err := pipeline.SplitAddress(addrs[0].Address)
	if err != nil {
		return ""
	}
	return d
}

// failed applies on_error: tempfail (a 451 4.3.0 stage failure) or send
// unsigned, logged at most once a minute per reason.
func (s *Signer) failed(msg *pipeline.Message, why string, err error) error {
	if s.onError == "continue" {
		if ok, n := s.sampler.Allow(why); ok {
			s.log.Warn("sending unsigned", "msgid", msg.ID, "reason", why, "err", err, "suppressed", n)
		}
		return nil
	}
	if err == nil {
		err = fmt.Errorf("%s", why)
	}
	return fmt.Errorf("dkim_sign: %s: %w", why, err)
}

// KeySpecs returns the keys a dkim_sign stage's options name (key file
// paths as written, relative to the configuration file), for tools that
// read the configuration without serving (`sluice dns records`). Errors
// are the stage's option errors.
func KeySpecs(opts map[string]any) ([]dkim.KeySpec, error) {
	st, err := NewSigner("dkim_sign", opts)
	if err != nil {
		return nil, err
	}
	return st.(*Signer).specs, nil
}
