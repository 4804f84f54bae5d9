package sandbox

import (
	"fmt"
	"math"
	"sort"
	"strconv"

	lua "github.com/yuin/gopher-lua"
)

// Opts is an options table passed to a sluice function, e.g. the table in
// sluice.listen_smtp { addr = "..." }. It was checked against a list of
// known keys when made; its accessors convert values and raise Lua errors
// that name the function, the key, the file and the line:
//
//	pipeline.lua:12: sluice.listen_smtp: unknown key "adress"
//	pipeline.lua:12: sluice.listen_smtp: key "max_recipients": want an integer, got string
type Opts struct {
	s      *State
	fn     string // "sluice.listen_smtp"
	prefix string // "tls." for a nested table
	T      *lua.LTable
}

// CheckOpts checks that argument n is a table of key = value pairs whose
// keys are all in keys, and returns it.
func (s *State) CheckOpts(n int, fn string, keys ...string) *Opts {
	v := s.L.Get(n)
	t, ok := v.(*lua.LTable)
	if !ok {
		s.Raise("%s: want a table of options as argument %d, got %s", fn, n, describe(v))
	}
	o := &Opts{s: s, fn: fn, T: t}
	o.checkKeys(keys)
	return o
}

// OptOpts is CheckOpts for an optional argument: nil (or no argument)
// gives an empty Opts.
func (s *State) OptOpts(n int, fn string, keys ...string) *Opts {
	if s.L.Get(n) == lua.LNil {
		return &Opts{s: s, fn: fn, T: s.L.NewTable()}
	}
	return s.CheckOpts(n, fn, keys...)
}

func (o *Opts) checkKeys(keys []string) {
	var bad []string
	positional := false
	o.T.ForEach(func(k, _ lua.LValue) {
		ks, ok := k.(lua.LString)
		if !ok {
			positional = true
			return
		}
		for _, want := range keys {
			if string(ks) == want {
				return
			}
		}
		bad = append(bad, string(ks))
	})
	if positional {
		o.s.Raise("%s: %swant key = value pairs, got a list entry", o.fn, o.where())
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		o.s.Raise("%s: unknown key %q", o.fn, o.prefix+bad[0])
	}
}

func (o *Opts) where() string {
	if o.prefix == "" {
		return ""
	}
	return fmt.Sprintf("key %q: ", o.prefix[:len(o.prefix)-1])
}

// Fn returns the function name used in errors.
func (o *Opts) Fn() string { return o.fn }

// Fail raises an error about key: "fn: key "k": msg".
func (o *Opts) Fail(key, format string, args ...any) {
	o.s.Raise("%s: key %q: %s", o.fn, o.prefix+key, fmt.Sprintf(format, args...))
}

// Get returns the raw value of key (lua.LNil when absent).
func (o *Opts) Get(key string) lua.LValue { return o.T.RawGetString(key) }

// Has reports whether key is present.
func (o *Opts) Has(key string) bool { return o.Get(key) != lua.LNil }

// String sets *dst and reports true when key is present; it must be a
// string.
func (o *Opts) String(key string, dst *string) bool {
	v := o.Get(key)
	if v == lua.LNil {
		return false
	}
	s, ok := v.(lua.LString)
	if !ok {
		o.Fail(key, "want a string, got %s", describe(v))
	}
	*dst = string(s)
	return true
}

// Bool sets *dst when key is present; it must be a boolean.
func (o *Opts) Bool(key string, dst *bool) bool {
	v := o.Get(key)
	if v == lua.LNil {
		return false
	}
	b, ok := v.(lua.LBool)
	if !ok {
		o.Fail(key, "want true or false, got %s", describe(v))
	}
	*dst = bool(b)
	return true
}

// Int64 sets *dst when key is present; it must be an integral number.
func (o *Opts) Int64(key string, dst *int64) bool {
	v := o.Get(key)
	if v == lua.LNil {
		return false
	}
	n, ok := v.(lua.LNumber)
	f := float64(n)
	if !ok || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
		o.Fail(key, "want an integer, got %s", describe(v))
	}
	*dst = int64(f)
	return true
}

// Int is Int64 for an int.
func (o *Opts) Int(key string, dst *int) bool {
	var n int64
	if !o.Int64(key, &n) {
		return false
	}
	*dst = int(n)
	return true
}

// Float sets *dst when key is present; it must be a number.
func (o *Opts) Float(key string, dst *float64) bool {
	v := o.Get(key)
	if v == lua.LNil {
		return false
	}
	n, ok := v.(lua.LNumber)
	if !ok {
		o.Fail(key, "want a number, got %s", describe(v))
	}
	*dst = float64(n)
	return true
}

// Strings sets *dst when key is present; it must be a list of strings (a
// single string is taken as a list of one).
func (o *Opts) Strings(key string, dst *[]string) bool {
	v := o.Get(key)
	if v == lua.LNil {
		return false
	}
	if s, ok := v.(lua.LString); ok {
		*dst = []string{string(s)}
		return true
	}
	list, err := StringList(v)
	if err != nil {
		o.Fail(key, "%v", err)
	}
	*dst = list
	return true
}

// Sub returns the nested options table under key, checked against keys,
// or nil when key is absent.
func (o *Opts) Sub(key string, keys ...string) *Opts {
	v := o.Get(key)
	if v == lua.LNil {
		return nil
	}
	t, ok := v.(*lua.LTable)
	if !ok {
		o.Fail(key, "want a table, got %s", describe(v))
	}
	sub := &Opts{s: o.s, fn: o.fn, prefix: o.prefix + key + ".", T: t}
	sub.checkKeys(keys)
	return sub
}

// StringList converts a Lua list of strings ({"a", "b"}) to a slice.
func StringList(v lua.LValue) ([]string, error) {
	t, ok := v.(*lua.LTable)
	if !ok {
		return nil, fmt.Errorf("want a list of strings, got %s", describe(v))
	}
	n := t.Len()
	out := make([]string, 0, n)
	count := 0
	var err error
	t.ForEach(func(k, _ lua.LValue) { count++ })
	if count != n {
		return nil, fmt.Errorf("want a list of strings, got a table with keys")
	}
	for i := 1; i <= n; i++ {
		e := t.RawGetInt(i)
		s, ok := e.(lua.LString)
		if !ok {
			err = fmt.Errorf("item %d: want a string, got %s", i, describe(e))
			break
		}
		out = append(out, string(s))
	}
	return out, err
}

// ToGo converts a Lua value to Go: nil → nil, booleans → bool, strings →
// string, integral numbers → int64, other numbers → float64, tables →
// []any when they are lists (keys 1..n, or empty) and map[string]any when
// every key is a string. Mixed tables, functions and userdata are errors
// that name the path to the bad value.
func ToGo(v lua.LValue) (any, error) { return toGo(v, "", 0) }

func toGo(v lua.LValue, path string, depth int) (any, error) {
	if depth > 32 {
		return nil, fmt.Errorf("%snested too deeply", pathPrefix(path))
	}
	switch x := v.(type) {
	case *lua.LNilType:
		return nil, nil
	case lua.LBool:
		return bool(x), nil
	case lua.LString:
		return string(x), nil
	case lua.LNumber:
		f := float64(x)
		if f == math.Trunc(f) && math.Abs(f) <= 1<<53 {
			return int64(f), nil
		}
		return f, nil
	case *lua.LTable:
		n := x.Len()
		strKeys, other := 0, 0
		x.ForEach(func(k, _ lua.LValue) {
			if _, ok := k.(lua.LString); ok {
				strKeys++
			} else {
				other++
			}
		})
		switch {
		case strKeys == 0 && other == n:
			list := make([]any, 0, n)
			for i := 1; i <= n; i++ {
				g, err := toGo(x.RawGetInt(i), path+"["+strconv.Itoa(i)+"]", depth+1)
				if err != nil {
					return nil, err
				}
				list = append(list, g)
			}
			return list, nil
		case other == 0:
			m := make(map[string]any, strKeys)
			var err error
			x.ForEach(func(k, e lua.LValue) {
				if err != nil {
					return
				}
				key := string(k.(lua.LString))
				p := key
				if path != "" {
					p = path + "." + key
				}
				m[key], err = toGo(e, p, depth+1)
			})
			if err != nil {
				return nil, err
			}
			return m, nil
		default:
			return nil, fmt.Errorf("%swant a list or a table of key = value pairs, not a mix of both", pathPrefix(path))
		}
	default:
		return nil, fmt.Errorf("%sa %s cannot be used as an option value", pathPrefix(path), v.Type())
	}
}

func pathPrefix(path string) string {
	if path == "" {
		return ""
	}
	return fmt.Sprintf("key %q: ", path)
}

// describe names a Lua value's type for error messages.
func describe(v lua.LValue) string {
	switch v.(type) {
	case *lua.LNilType:
		return "nil"
	case *lua.LUserData:
		if _, ok := ToVerdict(v); ok {
			return "a verdict"
		}
		if _, ok := ToRoute(v); ok {
			return "a route"
		}
		return "userdata"
	case *lua.LTable:
		return "a table"
	case *lua.LFunction:
		return "a function"
	}
	return v.Type().String()
}

// Describe names a Lua value's type for error messages ("string", "a
// table", "a verdict", ...).
func Describe(v lua.LValue) string { return describe(v) }
