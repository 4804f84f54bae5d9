package sandbox

import (
	"fmt"
	"sort"
	"strings"

	lua "github.com/yuin/gopher-lua"
)

// Hook names as they appear in a Lua stage table, in pipeline order. The
// index of a name in this list is its bit in a hook mask.
var Hooks = []string{
	"on_connect", "on_helo", "on_auth", "on_mail",
	"on_rcpt", "on_message", "on_route", "on_event",
}

// HookIndex returns the index of a hook name in Hooks, or -1.
func HookIndex(name string) int {
	for i, h := range Hooks {
		if h == name {
			return i
		}
	}
	return -1
}

// HookNames checks a stage table and returns the hooks it defines, in
// pipeline order. Every key must be a hook name with a function value;
// keys that start with "_" are private to the script (helpers, values
// exported for the script's own tests) and are ignored. An unknown key
// such as "on_rcp" or a hook that is not a function is an error.
func HookNames(t *lua.LTable) ([]string, error) {
	var errs []string
	mask := 0
	t.ForEach(func(k, v lua.LValue) {
		ks, ok := k.(lua.LString)
		if !ok {
			errs = append(errs, fmt.Sprintf("a stage table has hook names as keys, not list entries (found key %s)", k.String()))
			return
		}
		name := string(ks)
		if strings.HasPrefix(name, "_") {
			return
		}
		i := HookIndex(name)
		if i < 0 {
			errs = append(errs, fmt.Sprintf("unknown hook %q (want one of %s)", name, strings.Join(Hooks, ", ")))
			return
		}
		if _, ok := v.(*lua.LFunction); !ok {
			errs = append(errs, fmt.Sprintf("hook %q must be a function, got %s", name, describe(v)))
			return
		}
		mask |= 1 << i
	})
	if len(errs) > 0 {
		sort.Strings(errs)
		return nil, fmt.Errorf("%s", errs[0])
	}
	var out []string
	for i, h := range Hooks {
		if mask&(1<<i) != 0 {
			out = append(out, h)
		}
	}
	return out, nil
}
