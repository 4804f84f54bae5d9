package config

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/pipeline"
)

// Sandbox: sluice.sandbox { ... } (docs/sandbox.md). Captured mail
// (sluice.route.capture, sandbox tenants, sandbox SMTP listeners) is kept
// per tenant in its own store and never leaves the machine.
type Sandbox struct {
	// Path is the capture store's directory; default "sandbox" beside the
	// spool's directory ("./var/sandbox" for "./var/spool").
	Path string
	// Tenants are captured as a whole: every recipient of their mail is
	// routed to their sandbox inbox, whatever on_route chose.
	Tenants []string
	// Retention bounds each tenant's inbox; the oldest messages are
	// dropped past any limit (with a "sandbox_dropped" event).
	Retention SandboxRetention
	// LinksAllow lists the host names (or host:port) whose links the
	// "links" assertion may fetch; links to other hosts are skipped.
	LinksAllow []string
	// Simulate makes capture deliveries to matching recipients answer
	// like the outside world (bounces, deferrals, slow servers).
	Simulate []SimulateRule
	// SyncLag bounds how long a capture stays written to the operating
	// system but not synced to disk (a power failure can lose captures
	// that young; a kill -9 cannot). Default 200ms; 0: every group of
	// concurrent captures is synced before the queue records it
	// delivered (about 100-150 µs more CPU per capture). Otherwise 1ms
	// to 1 minute.
	SyncLag time.Duration
}

// DefaultSandboxSyncLag is Sandbox.SyncLag's default.
const DefaultSandboxSyncLag = 200 * time.Millisecond

// SandboxRetention bounds one tenant's sandbox inbox. Zero: no limit of
// that kind.
type SandboxRetention struct {
	Messages int           // default 10000
	Bytes    int64         // default 256 MiB
	Age      time.Duration // default 7 days
}

// SimulateRule is one simulated recipient behaviour.
type SimulateRule struct {
	// Tenant limits the rule to one tenant's sandbox; "" applies to all.
	Tenant string
	// Match is a recipient address ("bounce@sim.test"), a domain
	// ("@sim.test"), or a pattern with one '*' ("bounce+*@sim.test");
	// case-insensitive.
	Match string
	// Code, Enhanced and Text are the simulated reply to the end of data
	// ("550 5.1.1 No such user" in the configuration). Code 0: accept
	// (250) after Delay.
	Code     int
	Enhanced string
	Text     string
	// Times answers with the reply to the first Times attempts of a
	// recipient and accepts it afterwards; 0: every attempt.
	Times int
	// Delay is how long the simulated server takes to answer.
	Delay time.Duration
	// Complaint: once accepted, the recipient complains about the
	// message (a "complained" event; the address joins the tenant's
	// suppression list).
	Complaint bool
	// AutoReply, when set, is the text of an out-of-office reply the
	// recipient sends back to the envelope sender once accepted (captured
	// into the same inbox).
	AutoReply string
}

// DefaultSandboxRetention returns the retention defaults.
func DefaultSandboxRetention() SandboxRetention {
	return SandboxRetention{Messages: 10000, Bytes: 256 << 20, Age: 7 * 24 * time.Hour}
}

// SandboxPath is the capture store's directory: Sandbox.Path, or
// "sandbox" beside the spool's directory.
func (c *Config) SandboxPath() string {
	if c.Sandbox != nil && c.Sandbox.Path != "" {
		return c.Sandbox.Path
	}
	return filepath.Join(filepath.Dir(filepath.Clean(c.Spool.Path)), "sandbox")
}

// sluice.sandbox { tenants = {...}, retention = {...}, links_allow = {...}, simulate = {...}, sync_lag = "200ms" }
func (ld *loader) sandbox(L *lua.LState) int {
	const fn = "sluice.sandbox"
	ld.singleton(fn)
	o := ld.s.CheckOpts(1, fn, "path", "tenants", "retention", "links_allow", "simulate", "sync_lag")
	sb := &Sandbox{Retention: DefaultSandboxRetention(), SyncLag: DefaultSandboxSyncLag}
	if ld.durationOrZero(o, "sync_lag", &sb.SyncLag) {
		switch {
		case sb.SyncLag > time.Minute:
			o.Fail("sync_lag", "%v is longer than a minute: captures would stay that long at risk of a power failure (0: sync every capture group)", sb.SyncLag)
		case sb.SyncLag > 0 && sb.SyncLag < time.Millisecond:
			// The background sync ticks every sync_lag: shorter would
			// spin a core while the relay is idle.
			o.Fail("sync_lag", "%v is shorter than 1ms (0: sync every capture group)", sb.SyncLag)
		}
	}
	if o.String("path", &sb.Path) && sb.Path == "" {
		o.Fail("path", "must not be empty")
	} else if sb.Path != "" {
		sb.Path = ld.resolve(sb.Path)
	}
	if o.Strings("tenants", &sb.Tenants) {
		for _, t := range sb.Tenants {
			if !pipeline.ValidTenant(t) {
				o.Fail("tenants", "%q is not a tenant name (1 to 64 letters, digits, '.', '_' or '-')", t)
			}
		}
	}
	if r := o.Sub("retention", "messages", "bytes", "age"); r != nil {
		if r.Int("messages", &sb.Retention.Messages) && sb.Retention.Messages < 0 {
			r.Fail("messages", "must not be negative (0: no limit)")
		}
		ld.sizeOrZero(r, "bytes", &sb.Retention.Bytes)
		ld.durationOrZero(r, "age", &sb.Retention.Age)
	}
	if o.Strings("links_allow", &sb.LinksAllow) {
		for _, h := range sb.LinksAllow {
			if h == "" || strings.ContainsAny(h, "/ \t") {
				o.Fail("links_allow", "%q is not a host name or host:port", h)
			}
		}
	}
	for _, so := range o.List("simulate", "tenant", "match", "reply", "times", "delay", "complaint", "auto_reply") {
		var r SimulateRule
		if so.String("tenant", &r.Tenant) && !pipeline.ValidTenant(r.Tenant) {
			so.Fail("tenant", "%q is not a tenant name", r.Tenant)
		}
		if !so.String("match", &r.Match) || r.Match == "" {
			so.Fail("match", "is required: an address, \"@domain\" or a pattern with one '*'")
		}
		if strings.Count(r.Match, "*") > 1 || !strings.Contains(r.Match, "@") {
			so.Fail("match", "%q: want an address, \"@domain\" or a pattern with one '*'", r.Match)
		}
		var reply string
		if so.String("reply", &reply) {
			code, enh, text, err := ParseReply(reply)
			if err != nil {
				so.Fail("reply", "%v", err)
			}
			r.Code, r.Enhanced, r.Text = code, enh, text
		}
		if so.Int("times", &r.Times) && r.Times < 0 {
			so.Fail("times", "must not be negative")
		}
		ld.durationOrZero(so, "delay", &r.Delay)
		so.Bool("complaint", &r.Complaint)
		if so.String("auto_reply", &r.AutoReply) && (r.AutoReply == "" || len(r.AutoReply) > 10000) {
			so.Fail("auto_reply", "want the reply's text, 1 to 10000 bytes")
		}
		if r.Code == 0 && r.Delay == 0 && !r.Complaint && r.AutoReply == "" {
			so.Fail("reply", "give a reply (\"550 5.1.1 No such user\"), a delay, complaint = true or an auto_reply")
		}
		if r.Code >= 400 && (r.Complaint || r.AutoReply != "") && r.Times == 0 {
			so.Fail("complaint", "a recipient that never accepts cannot complain or auto-reply; give times = N or drop the reply")
		}
		sb.Simulate = append(sb.Simulate, r)
	}
	ld.cfg.Sandbox = sb
	return 0
}

// ParseReply parses a simulated SMTP reply "550 5.1.1 No such user": a
// code from 250 to 599, an optional enhanced code of the same class, and
// text.
func ParseReply(s string) (code int, enhanced, text string, err error) {
	f := strings.Fields(s)
	if len(f) == 0 {
		return 0, "", "", fmt.Errorf("want a reply like \"550 5.1.1 No such user\"")
	}
	code, err = strconv.Atoi(f[0])
	if err != nil || code < 200 || code > 599 {
		return 0, "", "", fmt.Errorf("%q: the reply must start with an SMTP code from 200 to 599", s)
	}
	rest := f[1:]
	if len(rest) > 0 {
		if ec, perr := pipeline.ParseEnhancedCode(rest[0]); perr == nil {
			if ec[0] != code/100 {
				return 0, "", "", fmt.Errorf("%q: enhanced code %s does not match the reply code's class", s, rest[0])
			}
			enhanced = rest[0]
			rest = rest[1:]
		}
	}
	return code, enhanced, strings.Join(rest, " "), nil
}
