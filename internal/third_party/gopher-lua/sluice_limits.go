package lua

// sluice: string length limit. This file is not part of upstream
// gopher-lua; see the Sluice section at the top of README.md.

import "fmt"

// SetMaxStringLen bounds the length in bytes of a string the VM builds in
// one step with the concatenation operator (..): a concatenation whose
// result would be longer than n bytes raises a Lua error instead of
// allocating the result. n <= 0 removes the bound (the default). name, when
// not empty, is the setting to raise, quoted in the error ("result of 2097152
// bytes is over the limit of 1048576 bytes (lua_options.max_string)").
//
// The bound is held by the state's Global, so it applies to the state and
// to every thread (coroutine) made from it. Set it while no Lua code runs.
// Builtins that build strings (string.rep, string.format, table.concat,
// string.gsub) are not bounded by it: wrap them if they need to be.
func (ls *LState) SetMaxStringLen(n int, name string) {
	ls.G.maxStringLen = n
	ls.G.maxStringName = name
}

// MaxStringLen returns the bound set by SetMaxStringLen (0: none).
func (ls *LState) MaxStringLen() int { return ls.G.maxStringLen }

// checkStringLen raises a Lua error when a string of n bytes built by op is
// over the bound set by SetMaxStringLen.
func (ls *LState) checkStringLen(op string, n int) {
	max := ls.G.maxStringLen
	if max <= 0 || n <= max {
		return
	}
	name := ""
	if ls.G.maxStringName != "" {
		name = " (" + ls.G.maxStringName + ")"
	}
	ls.RaiseError("%s", fmt.Sprintf("%s: result of %d bytes is over the limit of %d bytes%s", op, n, max, name))
}
