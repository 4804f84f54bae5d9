package config

import (
	"net/url"
	"time"

	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/internal/luahost/sandbox"
)

// Tracking: sluice.tracking { ... }. Engagement tracking: open pixel,
// signed click links, RFC 8058 one-click unsubscribe (docs/tracking.md).
// Without the section nothing is tracked, and a request's track_opens,
// track_clicks or list_unsubscribe changes nothing.
type Tracking struct {
	// SigningKey signs new tracking links: a file of at least 32 bytes of
	// secret (relative to the config file's directory). VerifyKeys are
	// older keys whose links are still accepted (rotation).
	SigningKey string
	VerifyKeys []string
	// Default is the policy of tenants not in Tenants (and of mail
	// without a tenant).
	Default TrackingPolicy
	Tenants []TrackingPolicy
	// TextLinks also rewrites the links of text/plain parts. Default false.
	TextLinks bool
	// MachineWindow: an open or click this soon after acceptance is
	// flagged machine (too_soon). Default 10s; "0s" turns the check off.
	MachineWindow time.Duration
	// Events: "first" (default) records the first human and the first
	// machine open per recipient and click per recipient and link;
	// "all" records every one.
	Events string
	// DedupeEntries bounds the memory of "first"; default 200000.
	DedupeEntries int
}

// TrackingPolicy is one tenant's tracking host and defaults.
type TrackingPolicy struct {
	Tenant                     string // "" for Default
	BaseURL                    string // https://HOST of the tenant's tracking host
	Opens, Clicks, Unsubscribe bool
}

// Enabled reports whether sluice.tracking was configured.
func (t *Tracking) Enabled() bool { return t != nil && t.SigningKey != "" }

var trackingPolicyKeys = []string{"base_url", "opens", "clicks", "unsubscribe"}

// sluice.tracking { signing_key = "keys/track.key", base_url = "https://t.relay.example", ... }
func (ld *loader) tracking(L *lua.LState) int {
	const fn = "sluice.tracking"
	ld.singleton(fn)
	o := ld.s.CheckOpts(1, fn, append([]string{"signing_key", "verify_keys", "tenants", "text_links",
		"machine_window", "events", "dedupe_entries"}, trackingPolicyKeys...)...)
	t := &Tracking{MachineWindow: 10 * time.Second, Events: "first", DedupeEntries: 200_000}
	if !o.String("signing_key", &t.SigningKey) || t.SigningKey == "" {
		o.Fail("signing_key", "is required: a file with at least 32 bytes of secret (head -c 32 /dev/urandom | base64 > FILE)")
	}
	t.SigningKey = ld.resolve(t.SigningKey)
	ld.paths(o, "verify_keys", &t.VerifyKeys)
	trackingPolicy(o, &t.Default)
	seen := map[string]bool{}
	for _, s := range o.List("tenants", append([]string{"name"}, trackingPolicyKeys...)...) {
		var p TrackingPolicy
		if !s.String("name", &p.Tenant) || p.Tenant == "" {
			s.Fail("name", "is required: the tenant's name")
		}
		if seen[p.Tenant] {
			s.Fail("name", "tenant %q is listed twice", p.Tenant)
		}
		seen[p.Tenant] = true
		trackingPolicy(s, &p)
		t.Tenants = append(t.Tenants, p)
	}
	o.Bool("text_links", &t.TextLinks)
	ld.durationOrZero(o, "machine_window", &t.MachineWindow)
	if o.String("events", &t.Events) && t.Events != "first" && t.Events != "all" {
		o.Fail("events", "want \"first\" or \"all\", got %q", t.Events)
	}
	if o.Int("dedupe_entries", &t.DedupeEntries) && (t.DedupeEntries < 1000 || t.DedupeEntries > 100_000_000) {
		o.Fail("dedupe_entries", "want 1000 to 100000000, got %d", t.DedupeEntries)
	}
	ld.cfg.Tracking = t
	return 0
}

// paths sets *dst from the list of file paths under key, each resolved
// against the configuration file's directory; an empty entry is an
// error.
func (ld *loader) paths(o *sandbox.Opts, key string, dst *[]string) bool {
	if !o.Strings(key, dst) {
		return false
	}
	for i, p := range *dst {
		if p == "" {
			o.Fail(key, "entry %d is empty", i+1)
		}
		(*dst)[i] = ld.resolve(p)
	}
	return true
}

func trackingPolicy(o *sandbox.Opts, p *TrackingPolicy) {
	if o.String("base_url", &p.BaseURL) {
		u, err := url.Parse(p.BaseURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			o.Fail("base_url", "want https://HOST (the tracking host name the tenant points at this relay, no path), got %q", p.BaseURL)
		}
	}
	o.Bool("opens", &p.Opens)
	o.Bool("clicks", &p.Clicks)
	o.Bool("unsubscribe", &p.Unsubscribe)
}
