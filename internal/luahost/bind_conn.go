package luahost

import (
	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/pipeline"
)

// conn (on_connect, on_helo, on_auth; txn.conn): a read-only view of a
// *pipeline.Conn.
//
//	conn.id             connection id
//	conn.ip             client IP address as a string ("192.0.2.1")
//	conn.port           client port (number)
//	conn.helo           EHLO/HELO name ("" before EHLO)
//	conn.tls            "TLS1.3", "TLS1.2", ... or nil in clear text
//	conn.source         "smtp" or "http"
//	conn.listener       listener name
//	conn.authenticated  true when the client authenticated
//	conn.relay_network  true when the client is in the listener's relay_networks
//	conn.identity       nil, or a copy {name, tenant, method, scopes, senders}
//	conn.tenant         the identity's tenant, or nil
func (st *state) connIndex(L *lua.LState) int {
	c, ok := L.CheckUserData(1).Value.(*pipeline.Conn)
	if !ok {
		st.stale("conn")
	}
	switch key := L.CheckString(2); key {
	case "id":
		L.Push(lua.LString(c.ID))
	case "ip":
		if c.RemoteIP.IsValid() {
			L.Push(lua.LString(c.RemoteIP.Unmap().String()))
		} else {
			L.Push(lua.LString(""))
		}
	case "port":
		L.Push(lua.LNumber(c.RemotePort))
	case "helo":
		L.Push(lua.LString(c.HELO))
	case "tls":
		pushOptString(L, c.TLS)
	case "source":
		L.Push(lua.LString(c.Source))
	case "listener":
		L.Push(lua.LString(c.Listener))
	case "authenticated":
		L.Push(lua.LBool(c.Authenticated()))
	case "relay_network":
		L.Push(lua.LBool(c.RelayNetwork))
	case "identity":
		L.Push(identityTable(L, c.Identity))
	case "tenant":
		pushOptString(L, c.Tenant())
	default:
		st.sb.Raise("conn has no field %q", key)
	}
	return 1
}

func identityTable(L *lua.LState, id *pipeline.Identity) lua.LValue {
	if id == nil {
		return lua.LNil
	}
	t := L.CreateTable(0, 5)
	t.RawSetString("name", lua.LString(id.Name))
	t.RawSetString("tenant", lua.LString(id.Tenant))
	t.RawSetString("method", lua.LString(id.Method))
	t.RawSetString("scopes", stringList(L, id.Scopes))
	t.RawSetString("senders", stringList(L, id.Senders))
	return t
}

func stringList(L *lua.LState, list []string) *lua.LTable {
	t := L.CreateTable(len(list), 0)
	for _, s := range list {
		t.Append(lua.LString(s))
	}
	return t
}

func pushOptString(L *lua.LState, s string) {
	if s == "" {
		L.Push(lua.LNil)
	} else {
		L.Push(lua.LString(s))
	}
}
