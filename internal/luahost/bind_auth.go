package luahost

import (
	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/pipeline"
)

// txn.auth and msg.auth: the authentication results recorded so far in
// the transaction (by the spf, dkim_verify and dmarc stages, or any
// stage's add_auth_result), as a new table of method → result, e.g.
//
//	if msg.auth.dmarc == "fail" then return sluice.reject(550, "5.7.1", "DMARC") end
//
// A method with several results (one per DKIM signature) reads "pass"
// when any passed, else its first result. A method with no result is
// nil. Results the calling hook added itself are not in it (they are
// applied when the hook returns).
func authTable(L *lua.LState, results []pipeline.AuthResult) *lua.LTable {
	t := L.CreateTable(0, 4)
	for _, a := range results {
		cur := t.RawGetString(a.Method)
		if cur == lua.LNil || a.Result == "pass" {
			t.RawSetString(a.Method, lua.LString(a.Result))
		}
	}
	return t
}
