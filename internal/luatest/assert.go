package luatest

import (
	"fmt"
	"sort"
	"strings"

	lua "github.com/yuin/gopher-lua"
)

// The assertions raise an error whose message starts with the file:line
// of the assertion (sandbox.State.Raise) and ends with the optional
// message argument.

// eq is t.eq(got, want [, msg]): equal values; tables are compared by
// their contents, recursively.
func (ts *testState) eq(L *lua.LState) int {
	got, want := L.Get(1), L.Get(2)
	if !deepEqual(got, want, 0) {
		ts.failf(3, "got %s, want %s", repr(got, 0), repr(want, 0))
	}
	return 0
}

// ne is t.ne(got, other [, msg]).
func (ts *testState) ne(L *lua.LState) int {
	got, other := L.Get(1), L.Get(2)
	if deepEqual(got, other, 0) {
		ts.failf(3, "got %s, want anything else", repr(got, 0))
	}
	return 0
}

// ok is t.ok(value [, msg]): value is neither nil nor false.
func (ts *testState) ok(L *lua.LState) int {
	if !lua.LVAsBool(L.Get(1)) {
		ts.failf(2, "got %s, want a true value", repr(L.Get(1), 0))
	}
	return 0
}

// isNil is t.is_nil(value [, msg]).
func (ts *testState) isNil(L *lua.LState) int {
	if L.Get(1) != lua.LNil {
		ts.failf(2, "got %s, want nil", repr(L.Get(1), 0))
	}
	return 0
}

// contains is t.contains(s, substring [, msg]): plain text, no pattern.
func (ts *testState) contains(L *lua.LState) int {
	s, ok := L.Get(1).(lua.LString)
	sub := L.CheckString(2)
	if !ok || !strings.Contains(string(s), sub) {
		ts.failf(3, "got %s, want a string containing %q", repr(L.Get(1), 0), sub)
	}
	return 0
}

// fail is t.fail([msg]).
func (ts *testState) fail(L *lua.LState) int {
	ts.failf(1, "failed")
	return 0
}

// failf raises an assertion failure; argument msgArg, when a string, is
// the test's own message.
func (ts *testState) failf(msgArg int, format string, args ...any) {
	text := fmt.Sprintf(format, args...)
	if m, ok := ts.sb.L.Get(msgArg).(lua.LString); ok {
		text = string(m) + ": " + text
	}
	ts.sb.Raise("%s", text)
}

func deepEqual(a, b lua.LValue, depth int) bool {
	if depth > 20 {
		return false
	}
	ta, ok1 := a.(*lua.LTable)
	tb, ok2 := b.(*lua.LTable)
	if !ok1 || !ok2 {
		return a == b // numbers, strings, booleans by value; the rest by identity
	}
	if ta == tb {
		return true
	}
	eq := true
	n := 0
	ta.ForEach(func(k, v lua.LValue) {
		n++
		if eq && !deepEqual(v, tb.RawGet(k), depth+1) {
			eq = false
		}
	})
	if !eq {
		return false
	}
	m := 0
	tb.ForEach(func(lua.LValue, lua.LValue) { m++ })
	return n == m
}

// repr renders v for a failure message: strings quoted, tables as
// {k = v, ...} with sorted keys (lists in order).
func repr(v lua.LValue, depth int) string {
	switch x := v.(type) {
	case lua.LString:
		return fmt.Sprintf("%q", string(x))
	case *lua.LTable:
		if depth > 3 {
			return "{...}"
		}
		var parts []string
		n := x.Len()
		for i := 1; i <= n; i++ {
			parts = append(parts, repr(x.RawGetInt(i), depth+1))
		}
		var keys []string
		vals := map[string]lua.LValue{}
		x.ForEach(func(k, val lua.LValue) {
			if kn, ok := k.(lua.LNumber); ok && float64(kn) == float64(int(kn)) && int(kn) >= 1 && int(kn) <= n {
				return
			}
			ks := k.String()
			if _, ok := k.(lua.LString); !ok {
				ks = "[" + ks + "]"
			}
			keys = append(keys, ks)
			vals[ks] = val
		})
		sort.Strings(keys)
		for _, k := range keys {
			parts = append(parts, k+" = "+repr(vals[k], depth+1))
		}
		return "{" + strings.Join(parts, ", ") + "}"
	}
	return v.String()
}
