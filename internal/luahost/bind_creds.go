package luahost

import (
	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/pipeline"
)

// creds (on_auth): a read-only view of *pipeline.Credentials.
//
//	creds.mechanism  "PLAIN", "LOGIN", "BEARER", "APIKEY"
//	creds.username   user name ("" for bearer tokens)
//	creds.password   password or API key
//	creds.token      bearer token ("" otherwise)
func (st *state) credsIndex(L *lua.LState) int {
	c, ok := L.CheckUserData(1).Value.(*pipeline.Credentials)
	if !ok {
		st.stale("creds")
	}
	switch key := L.CheckString(2); key {
	case "mechanism":
		L.Push(lua.LString(c.Mechanism))
	case "username":
		L.Push(lua.LString(c.Username))
	case "password":
		L.Push(lua.LString(c.Password))
	case "token":
		L.Push(lua.LString(c.Token))
	default:
		st.sb.Raise("creds has no field %q", key)
	}
	return 1
}
