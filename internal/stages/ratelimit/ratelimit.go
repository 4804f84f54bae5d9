// Package ratelimit is the `ratelimit` built-in stage: GCRA limits on
// messages, recipients or connections per client IP, identity, tenant,
// envelope sender domain or recipient domain, kept in the node's
// rate-limit store (internal/ratelimit: memory, or Redis for a cluster).
// A message over a limit is refused with 450 4.7.1 (SMTP; code = 451 to
// change it) naming the limit, at the SMTP phase where the key is known,
// and with HTTP 429 and Retry-After over the API. Options and examples:
// docs/ratelimit.md.
//
//	sluice.stage("limits", sluice.builtin.ratelimit {
//	  store = "redis", on_store_error = "allow",
//	  limits = {
//	    { key = "tenant", rate = "1000/hour", burst = 50 },
//	    { key = "recipient_domain", rate = "20/second", count = "recipients" },
//	  },
//	})
//
// Phases: count = "connections" at on_connect (client_ip only; SMTP
// answers 421 and closes); count = "messages" at on_mail, except for
// recipient_domain, charged at on_rcpt once per message and domain;
// count = "recipients" at on_rcpt, one per recipient. When a stage has
// limits of both phases, its on_mail limits are checked at the message's
// first on_rcpt, in the same store call as that recipient's limits, so a
// one-recipient message costs one store call (one Redis round trip), not
// two. The limits of one call are decided all or nothing: a message
// refused by one limit does not use up the others.
//
// State survives a reload while a limit's stage name, limit name, rate
// and burst are unchanged (they make its store key); a changed limit
// starts afresh. A limit whose key is unknown for a message (no
// identity, no tenant, the null sender <>) does not apply to it.
package ratelimit

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/net/idna"

	"github.com/sluice-mta/sluice/pipeline"
)

// Kind is the built-in stage kind.
const Kind = "ratelimit"

func init() { pipeline.Register(Kind, New) }

// Stage is a ratelimit stage. Safe for concurrent use once provisioned.
type Stage struct {
	name  string
	opts  *options
	store pipeline.RateStore
	env   *pipeline.Env

	connect, mail, rcpt []*limit // limits by hook
	// deferMail: the on_mail limits ride with the first on_rcpt call
	// (the stage has limits of both). markKey is the txn.Scratch key that
	// says they have been checked for this transaction; mark is the
	// (read-only, shared) edit that sets it.
	deferMail bool
	markKey   string
	mark      map[string]string
}

var (
	_ pipeline.Stage       = (*Stage)(nil)
	_ pipeline.ConnectHook = (*Stage)(nil)
	_ pipeline.MailHook    = (*Stage)(nil)
	_ pipeline.RcptHook    = (*Stage)(nil)
	_ pipeline.HookLister  = (*Stage)(nil)
	_ pipeline.Provisioner = (*Stage)(nil)
	_ pipeline.Validator   = (*Stage)(nil)
	_ pipeline.Bounded     = (*Stage)(nil)
)

// New is the stage's pipeline.Factory.
func New(name string, o map[string]any) (pipeline.Stage, error) {
	op, err := parseOptions(name, o)
	if err != nil {
		return nil, err
	}
	s := &Stage{name: name, opts: op}
	for _, l := range op.limits {
		switch {
		case l.count == CountConnections:
			s.connect = append(s.connect, l)
		case l.count == CountRecipients || l.key == KeyRecipientDomain:
			s.rcpt = append(s.rcpt, l)
		default:
			s.mail = append(s.mail, l)
		}
	}
	if len(s.mail) > 0 && len(s.rcpt) > 0 {
		s.deferMail = true
		s.markKey = "sluice.ratelimit." + name
		s.mark = map[string]string{s.markKey: "1"}
	}
	return s, nil
}

// Name implements pipeline.Stage.
func (s *Stage) Name() string { return s.name }

// Hooks lists the hooks some limit needs (pipeline.HookLister).
func (s *Stage) Hooks() []string {
	var h []string
	if len(s.connect) > 0 {
		h = append(h, "on_connect")
	}
	if len(s.mail) > 0 && !s.deferMail {
		h = append(h, "on_mail")
	}
	if len(s.rcpt) > 0 {
		h = append(h, "on_rcpt")
	}
	return h
}

// Provision takes the node's rate-limit stores.
func (s *Stage) Provision(env *pipeline.Env) error {
	s.env = env
	return nil
}

// Validate checks that the store asked for exists.
func (s *Stage) Validate() error {
	if s.env == nil || s.env.RateLimits == nil {
		return fmt.Errorf("ratelimit: not provisioned with the node's rate-limit stores")
	}
	switch s.opts.store {
	case "redis":
		if s.env.RateLimits.Redis == nil {
			return fmt.Errorf("store: \"redis\" needs sluice.redis { addr = \"127.0.0.1:6379\" } in the configuration (or use store = \"memory\")")
		}
		s.store = s.env.RateLimits.Redis
	default:
		s.store = s.env.RateLimits.Memory
	}
	return nil
}

// CallTimeout bounds every hook call (pipeline.Bounded), so the chain
// does not start a timer per call: on Redis, sluice.redis's timeout
// (Redis.Check applies it to the whole call, dial included); in memory a
// check never waits, and 1 ms stands for that.
func (s *Stage) CallTimeout() time.Duration {
	if s.opts.store == "redis" && s.env != nil && s.env.Redis != nil && s.env.Redis.Timeout > 0 {
		return s.env.Redis.Timeout
	}
	if s.opts.store == "redis" {
		return 0
	}
	return time.Millisecond
}

// OnConnect charges count = "connections" limits.
func (s *Stage) OnConnect(ctx context.Context, c *pipeline.Conn) (pipeline.Verdict, error) {
	return s.check(ctx, s.connect, nil, c, nil, nil)
}

// OnMail charges count = "messages" limits of keys known at MAIL FROM,
// unless the stage also has on_rcpt limits: then OnRcpt checks them.
func (s *Stage) OnMail(ctx context.Context, txn *pipeline.Txn) (pipeline.Verdict, error) {
	if s.deferMail {
		return pipeline.Verdict{}, nil
	}
	return s.check(ctx, s.mail, nil, txn.Conn, txn, nil)
}

// OnRcpt charges count = "recipients" limits, and recipient_domain
// message limits for the first recipient of each domain. Until a
// recipient has passed it, it also charges the message limits of keys
// known at MAIL FROM (when the stage defers them), in the same store
// call: a message refused by them is refused at each RCPT TO, and is
// charged once, with the first recipient this stage lets through.
func (s *Stage) OnRcpt(ctx context.Context, txn *pipeline.Txn, r *pipeline.Recipient) (pipeline.Verdict, error) {
	if !s.deferMail || txn.Scratch[s.markKey] != "" {
		return s.check(ctx, s.rcpt, nil, txn.Conn, txn, r)
	}
	v, err := s.check(ctx, s.mail, s.rcpt, txn.Conn, txn, r)
	if err == nil && v.Action == pipeline.Continue {
		v.Edits.Scratch = s.mark // charged (or failed open): not again for this message
	}
	return v, err
}

// maxChecks is the stack buffer size for one hook's checks.
const maxChecks = 8

// check charges the limits of a and b that apply to this event in one
// store call.
func (s *Stage) check(ctx context.Context, a, b []*limit, c *pipeline.Conn, txn *pipeline.Txn, r *pipeline.Recipient) (pipeline.Verdict, error) {
	var (
		cb   [maxChecks]pipeline.RateCheck
		ob   [maxChecks]pipeline.RateResult
		used [maxChecks]*limit
	)
	checks, out, which := cb[:0], ob[:0], used[:0]
	for _, limits := range [2][]*limit{a, b} {
		for _, l := range limits {
			v := keyValue(l, c, txn, r)
			if v == "" {
				continue
			}
			checks = append(checks, pipeline.RateCheck{Key: l.prefix + v, Rate: l.rate, N: 1, Stage: s.name, Limit: l.name})
			out = append(out, pipeline.RateResult{})
			which = append(which, l)
		}
	}
	if len(checks) == 0 {
		return pipeline.Verdict{}, nil
	}
	if err := s.store.Check(ctx, checks, out); err != nil {
		// Counted and logged (rate-limited) by the node's store.
		if s.opts.onError == OnErrorTempfail {
			return pipeline.TempfailVerdict(451, pipeline.EnhancedCode{4, 3, 0},
				"Rate limits cannot be checked now, try again later"), nil
		}
		return pipeline.Verdict{}, nil
	}
	var refused *limit
	var retry time.Duration
	for i := range out {
		if !out[i].Allowed {
			if refused == nil {
				refused = which[i]
			}
			retry = max(retry, out[i].RetryAfter)
		}
	}
	if refused == nil {
		return pipeline.Verdict{}, nil
	}
	secs := int64((retry + time.Second - 1) / time.Second)
	v := pipeline.TempfailVerdict(s.opts.code, pipeline.EnhancedCode{4, 7, 1},
		fmt.Sprintf("Rate limit %s exceeded (%s), try again in %d s", refused.name, refused.text, secs))
	v.RetryAfter = retry
	return v, nil
}

// keyValue is the value a limit counts per for this event, or "" when it
// does not apply.
func keyValue(l *limit, c *pipeline.Conn, txn *pipeline.Txn, r *pipeline.Recipient) string {
	switch l.key {
	case KeyClientIP:
		if c == nil || !c.RemoteIP.IsValid() {
			return ""
		}
		return clientKey(c.RemoteIP)
	case KeyIdentity:
		if c == nil || c.Identity == nil || c.Identity.Name == "" {
			return ""
		}
		return c.Identity.Method + ":" + c.Identity.Name
	case KeyTenant:
		if c == nil {
			return ""
		}
		return c.Tenant()
	case KeySenderDomain:
		if txn == nil {
			return ""
		}
		i := strings.LastIndexByte(txn.Sender, '@')
		if i < 0 {
			return "" // the null sender <>
		}
		return domainKey(txn.Sender[i+1:])
	case KeyRecipientDomain:
		if r == nil {
			return ""
		}
		d := domainKey(r.Domain)
		if l.count == CountMessages && txn != nil {
			for _, x := range txn.Recipients {
				if x.Domain == r.Domain || domainKey(x.Domain) == d {
					return "" // this message already counted for the domain
				}
			}
		}
		return d
	}
	return ""
}

// domainKey is the one key of a domain however it is written: lower case,
// and an internationalised domain (RFC 6531) as its A-labels
// (bücher.example and XN--BCHER-KVA.example are one key), so that
// alternating the two forms does not double a limit. A name IDNA refuses
// stays as given, in lower case.
func domainKey(d string) string {
	for i := 0; i < len(d); i++ {
		if d[i] >= 0x80 {
			if a, err := idna.Lookup.ToASCII(d); err == nil {
				return strings.ToLower(a)
			}
			break
		}
	}
	return strings.ToLower(d)
}

// clientKey is an IPv4 address, or an IPv6 address's /64 (one host
// usually holds a whole /64).
func clientKey(a netip.Addr) string {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}
