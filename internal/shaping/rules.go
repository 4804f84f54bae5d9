package shaping

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"regexp/syntax"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Params are the limits of one site for one egress source. A nil pointer
// is "not set here": the next layer's value applies (see Rules).
type Params struct {
	// ConnectionLimit is the maximum number of connections open at once.
	ConnectionLimit *int
	// MaxDeliveriesPerConnection is how many messages go over one
	// connection before it is closed and another opened.
	MaxDeliveriesPerConnection *int
	// MaxMessageRate bounds messages sent (per source, per site).
	MaxMessageRate *Throttle
	// Additional are further message rate throttles by name, e.g.
	// {"hourly" = "5000/h", "daily" = "50000/d"}; every one applies.
	Additional map[string]Throttle
	// ConnectTimeout bounds a TCP connect; DataTimeout waits for the
	// reply to the end of data (and each DATA write); IdleTimeout is how
	// long an unused connection is kept open.
	ConnectTimeout, DataTimeout, IdleTimeout *time.Duration
}

// merge overlays o's set values on p.
func (p *Params) merge(o Params) {
	over(&p.ConnectionLimit, o.ConnectionLimit)
	over(&p.MaxDeliveriesPerConnection, o.MaxDeliveriesPerConnection)
	over(&p.MaxMessageRate, o.MaxMessageRate)
	over(&p.ConnectTimeout, o.ConnectTimeout)
	over(&p.DataTimeout, o.DataTimeout)
	over(&p.IdleTimeout, o.IdleTimeout)
	for k, v := range o.Additional {
		if p.Additional == nil {
			p.Additional = map[string]Throttle{}
		}
		p.Additional[k] = v
	}
}

// over sets *dst to v when v is set.
func over[T any](dst **T, v *T) {
	if v != nil {
		*dst = v
	}
}

// clone copies p so that merging into the copy leaves p alone.
func (p Params) clone() Params {
	if p.Additional != nil {
		p.Additional = maps(p.Additional)
	}
	return p
}

func maps(m map[string]Throttle) map[string]Throttle {
	out := make(map[string]Throttle, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Action kinds of an automation rule.
const (
	// ActionSuspend stops delivery to the site from the egress source that
	// got the reply (KumoMTA's "Suspend": a blocklisting is per IP).
	ActionSuspend = "Suspend"
	// ActionSuspendSite stops delivery to the site from every source.
	ActionSuspendSite = "SuspendSite"
	// ActionSetConfig overrides one parameter for the site and source:
	// max_message_rate, connection_limit or max_deliveries_per_connection.
	ActionSetConfig = "SetConfig"
)

// Action is what an automation rule does; Name and Value are set for
// SetConfig.
type Action struct {
	Kind  string
	Name  string
	Value any // int, or Throttle for max_message_rate
}

// Automation is one adaptive rule: a reply from the site that matches
// any Regex (against "CODE ENHANCED TEXT", e.g. "421 4.7.0 Try again
// later") triggers Actions for Duration.
type Automation struct {
	Regex    []*regexp.Regexp
	Actions  []Action
	Duration time.Duration
	// Threshold, when set ({Threshold = "N/period"}), fires the rule only
	// at the Nth match within one period, per site and egress source;
	// nil fires at every match ("Immediate").
	Threshold *Throttle
	// Where is "file:entry" of the rule, for events and logs.
	Where string
}

// Entry is one block of a shaping file: "default", a domain, or a
// provider.
type Entry struct {
	Name string
	// MXRollup: the domain's parameters apply to its whole site (every
	// domain with the same MX hosts). Default true; false makes the
	// domain a site of its own.
	MXRollup bool
	// MXSuffixes (providers only): a site whose MX hosts all end in one of
	// these is the provider's site, named after the provider.
	MXSuffixes []string
	Params     Params
	Sources    map[string]Params
	Automation []Automation
}

// Rules is a parsed set of shaping files, later files overlaying earlier
// ones. Effective parameters for a site and egress source are layered:
// built-in defaults, "default", the provider (when the site's MX hosts
// match it), the domain entries whose site it is, then each layer's
// sources."NAME" overrides, then active automation overrides.
type Rules struct {
	Default   Entry
	Domains   map[string]*Entry
	Providers []*Entry // sorted by name
	// Warnings lists what was read but is not applied (KumoMTA keys that
	// Sluice does not implement, rules it cannot run); the caller logs
	// them.
	Warnings []string
}

// ignoredKeys are KumoMTA egress path keys that Sluice reads without
// applying (a warning each): a KumoMTA file loads, a typo does not.
var ignoredKeys = []string{
	"additional_connection_limits", "additional_source_selection_rates",
	"allow_smtp_auth_plain_without_tls", "allow_smtp_auth_plain_without_valid_certificate",
	"banner_timeout", "consecutive_connection_failures_before_delay", "data_dot_timeout",
	"dispatcher_progress_watchdog_timeout", "dispatcher_wakeup_strategy", "ehlo_domain", "ehlo_timeout",
	"enable_dane", "enable_mta_sts", "enable_pipelining", "enable_rset", "enable_tls", "ignore_8bit_checks",
	"ip_lookup_strategy", "low_memory_reduction_policy", "mail_from_timeout", "maintainer_wakeup_strategy",
	"max_connection_rate", "max_ready", "max_recipients_per_batch", "no_memory_reduction_policy",
	"openssl_cipher_list", "openssl_cipher_suites", "openssl_options",
	"opportunistic_tls_reconnect_on_failed_handshake", "prohibited_hosts", "rcpt_to_timeout",
	"reconnect_strategy", "refresh_interval", "refresh_strategy", "remember_broken_tls", "rset_timeout",
	"rustls_cipher_suites", "skip_hosts", "smtp_auth_plain_password", "smtp_auth_plain_username",
	"smtp_port", "source_selection_rate", "starttls_timeout", "system_shutdown_timeout",
	"tls_certificate", "tls_prefer_openssl", "tls_private_key", "try_next_host_on_transport_error",
	"use_lmtp", "replace_base",
}

// LoadFiles reads and merges shaping files in order. Errors name the
// file, the entry and the key.
func LoadFiles(paths ...string) (*Rules, error) {
	r := &Rules{Default: Entry{Name: "default", MXRollup: true}, Domains: map[string]*Entry{}}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("shaping: %w", err)
		}
		if err := r.add(p, b); err != nil {
			return nil, err
		}
	}
	if err := r.finish(); err != nil {
		return nil, err
	}
	return r, nil
}

// finish drops provider blocks that got no match from any file (a
// later file may add settings to a provider an earlier one matched), with
// a warning, and sorts the providers.
func (r *Rules) finish() error {
	sort.Slice(r.Providers, func(i, j int) bool { return r.Providers[i].Name < r.Providers[j].Name })
	r.Providers = slices.DeleteFunc(r.Providers, func(p *Entry) bool {
		if len(p.MXSuffixes) > 0 {
			return false
		}
		// KumoMTA loads such a block too; it can never match a site.
		r.Warnings = append(r.Warnings, fmt.Sprintf("shaping: provider %q has no match in any file (match = [{MXSuffix = \".example.net\"}]): it matches no site and its settings are unused", p.Name))
		return true
	})
	return nil
}

// Parse reads one shaping file's text (name is for errors).
func Parse(name string, src []byte) (*Rules, error) {
	r := &Rules{Default: Entry{Name: "default", MXRollup: true}, Domains: map[string]*Entry{}}
	if err := r.add(name, src); err != nil {
		return nil, err
	}
	if err := r.finish(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Rules) add(file string, src []byte) error {
	var doc map[string]any
	if _, err := toml.Decode(string(src), &doc); err != nil {
		return fmt.Errorf("shaping: %s: %w", file, err)
	}
	names := make([]string, 0, len(doc))
	for k := range doc {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		v := doc[name]
		if name == "provider" {
			provs, ok := v.(map[string]any)
			if !ok {
				return fmt.Errorf("shaping: %s: provider: want tables [provider.\"name\"]", file)
			}
			pnames := make([]string, 0, len(provs))
			for k := range provs {
				pnames = append(pnames, k)
			}
			sort.Strings(pnames)
			for _, pn := range pnames {
				t, ok := provs[pn].(map[string]any)
				if !ok {
					return fmt.Errorf("shaping: %s: provider %q: want a table", file, pn)
				}
				i := slices.IndexFunc(r.Providers, func(e *Entry) bool { return e.Name == pn })
				e := &Entry{Name: pn, MXRollup: true}
				if i >= 0 {
					e = r.Providers[i]
				} else {
					r.Providers = append(r.Providers, e)
				}
				if err := r.entry(file, "provider."+pn, e, t, true); err != nil {
					return err
				}
			}
			continue
		}
		t, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("shaping: %s: %q: want a table [\"%s\"]", file, name, name)
		}
		var e *Entry
		if name == "default" {
			e = &r.Default
		} else {
			d := strings.ToLower(strings.TrimSuffix(name, "."))
			if e = r.Domains[d]; e == nil {
				e = &Entry{Name: d, MXRollup: true}
				r.Domains[d] = e
			}
		}
		if err := r.entry(file, name, e, t, false); err != nil {
			return err
		}
	}
	return nil
}

// entry reads one block's keys into e.
func (r *Rules) entry(file, name string, e *Entry, t map[string]any, provider bool) error {
	where := fmt.Sprintf("shaping: %s: [%q]", file, name)
	keys := make([]string, 0, len(t))
	for k := range t {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := t[k]
		switch k {
		case "mx_rollup":
			b, ok := v.(bool)
			if !ok {
				return fmt.Errorf("%s: mx_rollup: want true or false", where)
			}
			e.MXRollup = b
		case "match":
			if !provider {
				return fmt.Errorf("%s: match is only for [provider.\"name\"] blocks", where)
			}
			list, ok := tableList(v)
			if !ok {
				return fmt.Errorf("%s: match: want a list like [{MXSuffix = \".google.com\"}]", where)
			}
			for i, m := range list {
				s, ok := m["MXSuffix"].(string)
				if !ok || len(m) != 1 || s == "" {
					return fmt.Errorf("%s: match[%d]: want {MXSuffix = \".example.net\"} (other match kinds are not supported)", where, i+1)
				}
				e.MXSuffixes = append(e.MXSuffixes, strings.ToLower(strings.TrimSuffix(s, ".")))
			}
		case "sources":
			srcs, ok := v.(map[string]any)
			if !ok {
				return fmt.Errorf("%s: sources: want tables [%q.sources.\"name\"]", where, name)
			}
			for sn, sv := range srcs {
				st, ok := sv.(map[string]any)
				if !ok {
					return fmt.Errorf("%s: sources.%q: want a table", where, sn)
				}
				if e.Sources == nil {
					e.Sources = map[string]Params{}
				}
				p := e.Sources[sn]
				for sk, sv := range st {
					if err := r.param(fmt.Sprintf("%s: sources.%q", where, sn), &p, sk, sv, provider); err != nil {
						return err
					}
				}
				e.Sources[sn] = p
			}
		case "automation":
			list, ok := tableList(v)
			if !ok {
				return fmt.Errorf("%s: automation: want [[%q.automation]] tables", where, name)
			}
			for i, m := range list {
				a, skip, err := parseAutomation(fmt.Sprintf("%s: automation[%d]", where, i+1), m)
				if err != nil {
					return err
				}
				if skip != "" {
					r.Warnings = append(r.Warnings, skip)
					continue
				}
				a.Where = fmt.Sprintf("%s:%s#%d", file, name, i+1)
				e.Automation = append(e.Automation, a)
			}
		default:
			if err := r.param(where, &e.Params, k, v, provider); err != nil {
				return err
			}
		}
	}
	return nil
}

// param reads one parameter key into p.
func (r *Rules) param(where string, p *Params, k string, v any, provider bool) error {
	switch k {
	case "connection_limit", "provider_connection_limit":
		n, err := positive(v)
		if err != nil {
			return fmt.Errorf("%s: %s: %v", where, k, err)
		}
		p.ConnectionLimit = &n
	case "max_deliveries_per_connection":
		n, err := positive(v)
		if err != nil {
			return fmt.Errorf("%s: %s: %v", where, k, err)
		}
		p.MaxDeliveriesPerConnection = &n
	case "max_message_rate":
		s, _ := v.(string)
		t, err := ParseThrottle(s)
		if err != nil {
			return fmt.Errorf("%s: %s: %v", where, k, err)
		}
		p.MaxMessageRate = &t
	case "additional_message_rate_throttles":
		m, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: %s: want a table of name = \"N/period\"", where, k)
		}
		for name, sv := range m {
			s, _ := sv.(string)
			t, err := ParseThrottle(s)
			if err != nil {
				return fmt.Errorf("%s: %s.%s: %v", where, k, name, err)
			}
			if p.Additional == nil {
				p.Additional = map[string]Throttle{}
			}
			p.Additional[name] = t
		}
	case "connect_timeout", "data_timeout", "idle_timeout":
		s, _ := v.(string)
		d, err := ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%s: %s: %v", where, k, err)
		}
		if d <= 0 { // "-5s" or "0s" is a mistake, not "no timeout"
			return fmt.Errorf("%s: %s: want a positive duration like \"30s\", got %q", where, k, s)
		}
		switch k {
		case "connect_timeout":
			p.ConnectTimeout = &d
		case "data_timeout":
			p.DataTimeout = &d
		default:
			p.IdleTimeout = &d
		}
	default:
		if slices.Contains(ignoredKeys, k) {
			r.Warnings = append(r.Warnings, fmt.Sprintf("%s: %s is a KumoMTA key that Sluice does not apply; ignored", where, k))
			return nil
		}
		return fmt.Errorf("%s: unknown key %q", where, k)
	}
	return nil
}

// tableList reads an array of tables, written [[x]] or [{...}, {...}].
func tableList(v any) ([]map[string]any, bool) {
	switch l := v.(type) {
	case []map[string]any:
		return l, true
	case []any:
		out := make([]map[string]any, 0, len(l))
		for _, x := range l {
			m, ok := x.(map[string]any)
			if !ok {
				return nil, false
			}
			out = append(out, m)
		}
		return out, true
	}
	return nil, false
}

func positive(v any) (int, error) {
	if str, ok := v.(string); ok { // KumoMTA's "local:5": limits are per node here anyway
		n, err := strconv.ParseInt(strings.TrimPrefix(str, "local:"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("want a whole number of at least 1, got %q", str)
		}
		v = n
	}
	n, ok := v.(int64)
	if !ok || n < 1 || n > 1<<31 {
		return 0, fmt.Errorf("want a whole number of at least 1, got %v", v)
	}
	return int(n), nil
}

// parseAutomation reads one [[X.automation]] table. skip is a warning
// when the rule is valid KumoMTA but not something Sluice can run.
func parseAutomation(where string, m map[string]any) (a Automation, skip string, err error) {
	for k := range m {
		switch k {
		case "regex", "action", "duration", "trigger", "match_internal":
		default:
			return a, "", fmt.Errorf("%s: unknown key %q", where, k)
		}
	}
	switch t := m["trigger"].(type) {
	case nil:
	case string:
		if t != "Immediate" {
			return a, "", fmt.Errorf("%s: trigger: want \"Immediate\" or {Threshold = \"N/period\"}", where)
		}
	case map[string]any:
		spec, ok := t["Threshold"].(string)
		if !ok || len(t) != 1 {
			return a, "", fmt.Errorf("%s: trigger: want \"Immediate\" or {Threshold = \"N/period\"}", where)
		}
		th, err := ParseThrottle(spec)
		if err != nil {
			return a, "", fmt.Errorf("%s: trigger: %v", where, err)
		}
		if th.Quantity > maxThreshold {
			return a, "", fmt.Errorf("%s: trigger: at most %d matches per period", where, maxThreshold)
		}
		a.Threshold = &th
	default:
		return a, "", fmt.Errorf("%s: trigger: want \"Immediate\" or {Threshold = \"N/period\"}", where)
	}
	var res []string
	switch v := m["regex"].(type) {
	case string:
		res = []string{v}
	case []any:
		for _, x := range v {
			s, ok := x.(string)
			if !ok {
				return a, "", fmt.Errorf("%s: regex: want strings", where)
			}
			res = append(res, s)
		}
	default:
		return a, "", fmt.Errorf("%s: regex is required (a string or a list of strings)", where)
	}
	for _, s := range res {
		re, err := regexp.Compile(s)
		if err != nil {
			// KumoMTA's regexes may use look-around or back-references,
			// which Go's RE2 lacks: such a rule is skipped. Any other
			// error is a mistake in the file ("(abc"), not a rule written
			// for another engine: it must not pass silently.
			var se *syntax.Error
			if errors.As(err, &se) && (se.Code == syntax.ErrInvalidPerlOp || se.Code == syntax.ErrInvalidEscape) {
				return a, fmt.Sprintf("%s: regex %q cannot be compiled by Go (RE2 has no look-around or back-references): %v; rule skipped", where, s, err), nil
			}
			return a, "", fmt.Errorf("%s: regex %q: %v", where, s, err)
		}
		a.Regex = append(a.Regex, re)
	}
	var acts []any
	switch v := m["action"].(type) {
	case []any:
		acts = v
	case []map[string]any:
		for _, x := range v {
			acts = append(acts, x)
		}
	case nil:
		return a, "", fmt.Errorf("%s: action is required", where)
	default:
		acts = []any{v}
	}
	for i, x := range acts {
		act, skipAct, err := parseAction(fmt.Sprintf("%s: action[%d]", where, i+1), x)
		if err != nil {
			return a, "", err
		}
		if skipAct != "" {
			return a, skipAct, nil
		}
		a.Actions = append(a.Actions, act)
	}
	ds, _ := m["duration"].(string)
	if a.Duration, err = ParseDuration(ds); err != nil || a.Duration <= 0 {
		return a, "", fmt.Errorf("%s: duration: want a positive duration like \"90m\" or \"2 hours\"", where)
	}
	return a, "", nil
}

func parseAction(where string, x any) (Action, string, error) {
	switch v := x.(type) {
	case string:
		switch v {
		case ActionSuspend, ActionSuspendSite:
			return Action{Kind: v}, "", nil
		case "SuspendTenant", "SuspendCampaign":
			return Action{}, fmt.Sprintf("%s: %s is not supported; rule skipped", where, v), nil
		}
		return Action{}, "", fmt.Errorf("%s: unknown action %q (want Suspend, SuspendSite or {SetConfig = {...}})", where, v)
	case map[string]any:
		sc, ok := v["SetConfig"].(map[string]any)
		if !ok || len(v) != 1 {
			return Action{}, "", fmt.Errorf("%s: want {SetConfig = {name = \"...\", value = ...}}", where)
		}
		name, _ := sc["name"].(string)
		a := Action{Kind: ActionSetConfig, Name: name}
		switch name {
		case "max_message_rate":
			s, _ := sc["value"].(string)
			t, err := ParseThrottle(s)
			if err != nil {
				return a, "", fmt.Errorf("%s: value: %v", where, err)
			}
			a.Value = t
		case "connection_limit", "max_deliveries_per_connection":
			n, err := positive(sc["value"])
			if err != nil {
				return a, "", fmt.Errorf("%s: value: %v", where, err)
			}
			a.Value = n
		default:
			return a, fmt.Sprintf("%s: SetConfig %q is not supported (max_message_rate, connection_limit, max_deliveries_per_connection); rule skipped", where, name), nil
		}
		return a, "", nil
	}
	return Action{}, "", fmt.Errorf("%s: want \"Suspend\", \"SuspendSite\" or {SetConfig = {...}}", where)
}

// maxThreshold bounds a Threshold's quantity: the matches are kept.
const maxThreshold = 1000

// ParseDuration reads Go durations ("90m", "1h30m") and the human forms
// of shaping files ("2 hours", "5 minutes", "3 days", "30s").
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if d, err := time.ParseDuration(s); err == nil {
		return d, nil
	}
	j := 0
	for j < len(s) && (s[j] >= '0' && s[j] <= '9' || s[j] == '.') {
		j++
	}
	n, err := strconv.ParseFloat(s[:j], 64)
	unit, ok := periods[strings.ToLower(strings.TrimSpace(s[j:]))]
	if err != nil || !ok {
		return 0, fmt.Errorf("%q is not a duration (want \"30s\", \"90m\", \"2 hours\", \"3 days\")", s)
	}
	return time.Duration(n * float64(unit)), nil
}
