package luahost

import (
	"net/netip"
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

// check runs an on_connect body that asserts on conn and returns
// sluice.accept() when every assertion held.
func checkConn(t *testing.T, c *pipeline.Conn, body string) {
	t.Helper()
	st, _, _ := inline(t, "on_connect = function(conn)\n"+body+"\n  return sluice.accept()\nend")
	v, err := st.(pipeline.ConnectHook).OnConnect(bg, c)
	if err != nil || v.Action != pipeline.Accept {
		t.Fatalf("%+v %v", v, err)
	}
}

func TestConnFields(t *testing.T) {
	checkConn(t, testConn(), `
  assert(conn.id == "c1", "id")
  assert(conn.ip == "192.0.2.7", "ip")
  assert(conn.port == 40000, "port")
  assert(conn.helo == "client.example", "helo")
  assert(conn.tls == "TLS1.3", "tls")
  assert(conn.source == "smtp", "source")
  assert(conn.listener == "mx", "listener")
  assert(conn.authenticated == false, "authenticated")
  assert(conn.relay_network == false, "relay_network")
  assert(conn.identity == nil, "identity")
  assert(conn.tenant == nil, "tenant")
  assert(tostring(conn) == "conn")`)

	c := testConn()
	c.TLS = ""
	c.RemoteIP = netip.MustParseAddr("::ffff:198.51.100.1")
	c.RelayNetwork = true
	c.Identity = &pipeline.Identity{Name: "alice", Tenant: "acme", Method: "smtp-auth", Scopes: []string{"send", "admin"}, Senders: []string{"acme.example"}}
	checkConn(t, c, `
  assert(conn.tls == nil, "tls")
  assert(conn.ip == "198.51.100.1", "ip unmapped: " .. conn.ip)
  assert(conn.relay_network == true)
  assert(conn.authenticated == true)
  assert(conn.tenant == "acme")
  local id = conn.identity
  assert(id.name == "alice" and id.tenant == "acme" and id.method == "smtp-auth")
  assert(#id.scopes == 2 and id.scopes[2] == "admin")
  assert(id.senders[1] == "acme.example")
  id.name = "mallory"  -- a copy: no effect on Go`)
	if c.Identity.Name != "alice" {
		t.Fatal("identity copy leaked edits")
	}
}

func TestConnErrors(t *testing.T) {
	for _, tt := range []struct{ body, want string }{
		{`return conn.adress`, `conn has no field "adress"`},
		{`conn.helo = "x"`, `conn.helo is read-only`},
	} {
		st, _, _ := inline(t, "on_connect = function(conn)\n  "+tt.body+"\nend")
		_, err := st.(pipeline.ConnectHook).OnConnect(bg, testConn())
		wantErrContains(t, err, "pipeline.lua:4", tt.want)
	}
}

func TestHeloArgs(t *testing.T) {
	st, _, _ := inline(t, `on_helo = function(conn, name)
    if name == "localhost" then return sluice.reject(550, "5.7.1", "bad helo " .. name) end
  end`)
	h := st.(pipeline.HeloHook)
	v, err := h.OnHelo(bg, testConn(), "localhost")
	if err != nil || v.Action != pipeline.Reject || v.Text != "bad helo localhost" {
		t.Fatalf("%+v %v", v, err)
	}
	v, err = h.OnHelo(bg, testConn(), "mx.example")
	if err != nil || v.Action != pipeline.Continue {
		t.Fatalf("%+v %v", v, err)
	}
}
