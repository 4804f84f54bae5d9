package luahost

import (
	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/pipeline"
)

// rcpt (on_rcpt, on_route): a read-only view of a *pipeline.Recipient.
//
//	rcpt.address   "bob@example.org", as given
//	rcpt.local_part "bob" (also rcpt["local"]: `local` is a Lua keyword,
//	                so rcpt.local is a syntax error)
//	rcpt.domain    "example.org" (lower case)
//	rcpt.relay     true once relaying to it was authorised
func (st *state) rcptIndex(L *lua.LState) int {
	r, ok := L.CheckUserData(1).Value.(*pipeline.Recipient)
	if !ok {
		st.stale("rcpt")
	}
	switch key := L.CheckString(2); key {
	case "address":
		L.Push(lua.LString(r.Address))
	case "local_part", "local":
		L.Push(lua.LString(r.Local))
	case "domain":
		L.Push(lua.LString(r.Domain))
	case "relay":
		L.Push(lua.LBool(r.Relay))
	default:
		st.sb.Raise("rcpt has no field %q", key)
	}
	return 1
}
