package ratelimit

import (
	"fmt"
	"sort"
	"strings"

	rl "github.com/sluice-mta/sluice/internal/ratelimit"
	"github.com/sluice-mta/sluice/pipeline"
)

// Key kinds: what a limit counts per.
const (
	KeyClientIP        = "client_ip"        // the client's address (IPv6: its /64)
	KeyIdentity        = "identity"         // the authenticated identity (SMTP AUTH user, API key, token subject)
	KeyTenant          = "tenant"           // the identity's tenant
	KeySenderDomain    = "sender_domain"    // the envelope sender's domain
	KeyRecipientDomain = "recipient_domain" // each recipient's domain
)

// What a limit counts.
const (
	CountMessages    = "messages"    // one per message (per recipient domain for recipient_domain)
	CountRecipients  = "recipients"  // one per recipient
	CountConnections = "connections" // one per connection (client_ip only)
)

// Store error rules.
const (
	OnErrorAllow    = "allow"    // fail open: the message passes
	OnErrorTempfail = "tempfail" // fail closed: 451 4.3.0 / HTTP 503
)

var keyKinds = []string{KeyClientIP, KeyIdentity, KeyTenant, KeySenderDomain, KeyRecipientDomain}

// limit is one compiled limit.
type limit struct {
	name   string
	key    string
	count  string
	rate   pipeline.Rate
	prefix string // store key prefix: stage/name/rate/burst:
	text   string // "rate" as configured, for replies
}

// options are the stage's compiled options.
type options struct {
	store   string // "memory" or "redis"
	onError string
	code    int
	limits  []*limit
}

// parseOptions reads the options of sluice.builtin.ratelimit. Every error
// names the key.
func parseOptions(stage string, o map[string]any) (*options, error) {
	op := &options{store: "memory", onError: OnErrorAllow, code: 450}
	limitKeys := []string{"name", "key", "rate", "burst", "count"}
	known := append([]string{"store", "on_store_error", "code", "limits"}, limitKeys...)
	if err := unknownKeys("", o, known); err != nil {
		return nil, err
	}
	var err error
	if op.store, err = oneOf(o, "store", op.store, "memory", "redis"); err != nil {
		return nil, err
	}
	if op.onError, err = oneOf(o, "on_store_error", op.onError, OnErrorAllow, OnErrorTempfail); err != nil {
		return nil, err
	}
	if v, ok := o["code"]; ok {
		n, ok := v.(int64)
		if !ok || (n != 450 && n != 451) {
			return nil, fmt.Errorf("code: want 450 or 451, got %v", v)
		}
		op.code = int(n)
	}
	var raw []map[string]any
	if _, ok := o["key"]; ok {
		// The one-limit shorthand: { key = "identity", rate = "600/minute" }.
		one := map[string]any{}
		for _, k := range limitKeys {
			if v, ok := o[k]; ok {
				one[k] = v
			}
		}
		raw = append(raw, one)
	} else {
		for _, k := range limitKeys {
			if _, ok := o[k]; ok {
				return nil, fmt.Errorf("%s: set key too (the one-limit form), or put it inside limits = { { key = ..., %s = ... } }", k, k)
			}
		}
	}
	if v, ok := o["limits"]; ok {
		list, ok := v.([]any)
		if !ok {
			if _, one := v.(map[string]any); one {
				return nil, fmt.Errorf("limits: want a list of tables, got one table with named fields; wrap it: limits = { { key = \"tenant\", rate = \"1000/hour\" } }")
			}
			return nil, fmt.Errorf("limits: want a list of tables like { { key = \"tenant\", rate = \"1000/hour\" } }, got %v", v)
		}
		for i, x := range list {
			m, ok := x.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("limits[%d]: want a table like { key = \"tenant\", rate = \"1000/hour\" }", i+1)
			}
			raw = append(raw, m)
		}
	}
	if len(raw) == 0 {
		return nil, fmt.Errorf("limits: at least one limit is needed, e.g. limits = { { key = \"client_ip\", rate = \"100/minute\" } }")
	}
	names := map[string]bool{}
	for i, m := range raw {
		where := fmt.Sprintf("limits[%d].", i+1)
		if _, one := o["key"]; one {
			where = ""
		}
		l, err := parseLimit(where, m, limitKeys)
		if err != nil {
			return nil, err
		}
		if names[l.name] {
			return nil, fmt.Errorf("%sname: two limits are named %q; give each a distinct name = \"...\"", where, l.name)
		}
		names[l.name] = true
		l.prefix = fmt.Sprintf("%s/%s/%d/%s/%d:", stage, l.name, l.rate.Limit, l.rate.Period, l.rate.EffectiveBurst())
		op.limits = append(op.limits, l)
	}
	return op, nil
}

func parseLimit(where string, m map[string]any, known []string) (*limit, error) {
	if err := unknownKeys(where, m, known); err != nil {
		return nil, err
	}
	l := &limit{count: CountMessages}
	if _, ok := m["key"]; !ok {
		return nil, fmt.Errorf("%skey: required, one of %s", where, strings.Join(keyKinds, ", "))
	}
	var err error
	if l.key, err = oneOf(m, "key", "", keyKinds...); err != nil {
		return nil, fmt.Errorf("%s%w", where, err)
	}
	if l.count, err = oneOf(m, "count", l.count, CountMessages, CountRecipients, CountConnections); err != nil {
		return nil, fmt.Errorf("%s%w", where, err)
	}
	if l.count == CountConnections && l.key != KeyClientIP {
		return nil, fmt.Errorf("%scount: \"connections\" is counted at connect, where only client_ip is known; use count = \"messages\" for key %q", where, l.key)
	}
	rv, ok := m["rate"]
	if !ok {
		return nil, fmt.Errorf("%srate: required, a string like \"100/minute\"", where)
	}
	rs, ok := rv.(string)
	if !ok {
		return nil, fmt.Errorf("%srate: want a string like \"100/minute\", got %v", where, rv)
	}
	if l.rate, err = rl.ParseRate(rs); err != nil {
		return nil, fmt.Errorf("%srate: %w", where, err)
	}
	l.text = rs
	if v, ok := m["burst"]; ok {
		n, ok := v.(int64)
		if !ok || n < 1 || n > rl.MaxLimit {
			return nil, fmt.Errorf("%sburst: want a whole number from 1 to %d, got %v", where, rl.MaxLimit, v)
		}
		l.rate.Burst = int(n)
	}
	l.name = l.key
	if l.count != CountMessages {
		l.name = l.key + "_" + l.count
	}
	if v, ok := m["name"]; ok {
		s, ok := v.(string)
		if !ok || s == "" || len(s) > 64 || strings.ContainsAny(s, "/: \t\r\n") {
			return nil, fmt.Errorf("%sname: want a short name without spaces, '/' or ':', got %v", where, v)
		}
		l.name = s
	}
	return l, nil
}

func oneOf(m map[string]any, key, def string, allowed ...string) (string, error) {
	v, ok := m[key]
	if !ok {
		return def, nil
	}
	s, _ := v.(string)
	for _, a := range allowed {
		if s == a {
			return s, nil
		}
	}
	return "", fmt.Errorf("%s: want one of %q, got %v", key, allowed, v)
}

func unknownKeys(where string, m map[string]any, known []string) error {
	var bad []string
	for k := range m {
		found := false
		for _, x := range known {
			if k == x {
				found = true
				break
			}
		}
		if !found {
			bad = append(bad, k)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	sort.Strings(bad)
	return fmt.Errorf("%s%s: unknown option; known: %s", where, bad[0], strings.Join(known, ", "))
}
