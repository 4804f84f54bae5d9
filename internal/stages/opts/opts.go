// Package opts reads a built-in stage's options (the map[string]any the
// configuration loader makes of sluice.builtin.KIND { ... }) into Go
// values, naming the stage kind and the key in every error, and refuses
// unknown keys. Use: o := opts.New("dkim_sign", m); o.String("x", &x);
// ...; if err := o.Err(); err != nil { ... }. The first error wins.
package opts

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Opts reads one options table. Not safe for concurrent use.
type Opts struct {
	kind string
	m    map[string]any
	used map[string]bool
	err  error
}

// New wraps the options of a stage of kind.
func New(kind string, m map[string]any) *Opts {
	return &Opts{kind: kind, m: m, used: map[string]bool{}}
}

// Fail records an error about key (the first one wins).
func (o *Opts) Fail(key, format string, a ...any) {
	if o.err == nil {
		o.err = fmt.Errorf("sluice.builtin.%s: %s: %s", o.kind, key, fmt.Sprintf(format, a...))
	}
}

func (o *Opts) get(key string) (any, bool) {
	o.used[key] = true
	v, ok := o.m[key]
	return v, ok && v != nil
}

// Has reports whether key is given.
func (o *Opts) Has(key string) bool { _, ok := o.m[key]; return ok }

// String sets *dst to a string option; it reports whether key was given.
func (o *Opts) String(key string, dst *string) bool {
	v, ok := o.get(key)
	if !ok {
		return false
	}
	s, isStr := v.(string)
	if !isStr {
		o.Fail(key, "want a string, got %T", v)
		return false
	}
	*dst = s
	return true
}

// Bool sets *dst to a boolean option.
func (o *Opts) Bool(key string, dst *bool) bool {
	v, ok := o.get(key)
	if !ok {
		return false
	}
	b, isBool := v.(bool)
	if !isBool {
		o.Fail(key, "want true or false, got %T", v)
		return false
	}
	*dst = b
	return true
}

// Int sets *dst to an integer option within [lo, hi].
func (o *Opts) Int(key string, dst *int, lo, hi int) bool {
	v, ok := o.get(key)
	if !ok {
		return false
	}
	n, isInt := v.(int64)
	if !isInt || n < int64(lo) || n > int64(hi) {
		o.Fail(key, "want an integer from %d to %d, got %v", lo, hi, v)
		return false
	}
	*dst = int(n)
	return true
}

// Duration sets *dst to a duration option ("10s", "1h30m").
func (o *Opts) Duration(key string, dst *time.Duration) bool {
	var s string
	if !o.String(key, &s) {
		return false
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		o.Fail(key, "want a duration such as \"10s\" or \"24h\", got %q", s)
		return false
	}
	*dst = d
	return true
}

// Strings sets *dst to a list of strings (a single string is refused).
func (o *Opts) Strings(key string, dst *[]string) bool {
	v, ok := o.get(key)
	if !ok {
		return false
	}
	l, isList := v.([]any)
	if !isList {
		o.Fail(key, "want a list of strings, got %T", v)
		return false
	}
	out := make([]string, 0, len(l))
	for i, x := range l {
		s, isStr := x.(string)
		if !isStr {
			o.Fail(key, "item %d: want a string, got %T", i+1, x)
			return false
		}
		out = append(out, s)
	}
	*dst = out
	return true
}

// Tables returns a list of tables option, each wrapped as Opts of its own
// (their errors name key[i]); check each with Err.
func (o *Opts) Tables(key string) []*Opts {
	v, ok := o.get(key)
	if !ok {
		return nil
	}
	l, isList := v.([]any)
	if !isList {
		o.Fail(key, "want a list of tables, got %T", v)
		return nil
	}
	var out []*Opts
	for i, x := range l {
		m, isMap := x.(map[string]any)
		if !isMap {
			o.Fail(key, "item %d: want a table, got %T", i+1, x)
			return nil
		}
		out = append(out, New(fmt.Sprintf("%s: %s[%d]", o.kind, key, i+1), m))
	}
	return out
}

// Err returns the first error, or an error naming the unknown keys.
func (o *Opts) Err() error {
	if o.err != nil {
		return o.err
	}
	var unknown []string
	for k := range o.m {
		if !o.used[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fmt.Errorf("sluice.builtin.%s: unknown option %s", o.kind, strings.Join(unknown, ", "))
	}
	return nil
}
