package luahost

import (
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

const authStage = `on_auth = function(conn, creds)
    if creds.mechanism == "PLAIN" and creds.username == "alice" and creds.password == "s3cret" then
      return sluice.accept{ name = "alice", tenant = "acme", scopes = {"send"}, senders = {"acme.example"} }
    end
    if creds.username == "bob" then
      return sluice.accept()
    end
    if creds.token ~= "" then
      return sluice.accept{ tenant = "tok", method = "token" }
    end
    if creds.username == "mallory" then
      return sluice.reject(535, "5.7.8", "no")
    end
  end`

func TestAuth(t *testing.T) {
	st, _, _ := inline(t, authStage)
	h := st.(pipeline.AuthHook)

	v, id, err := h.OnAuth(bg, testConn(), &pipeline.Credentials{Mechanism: "PLAIN", Username: "alice", Password: "s3cret"})
	if err != nil || v.Action != pipeline.Accept || id == nil {
		t.Fatalf("%+v %+v %v", v, id, err)
	}
	if id.Name != "alice" || id.Tenant != "acme" || id.Method != "smtp-auth" || len(id.Scopes) != 1 || id.Scopes[0] != "send" || id.Senders[0] != "acme.example" || !id.HasScope("send") {
		t.Fatalf("identity %+v", id)
	}

	// accept() without a table: name from the credentials, method from the source.
	c := testConn()
	c.Source = pipeline.SourceHTTP
	_, id, err = h.OnAuth(bg, c, &pipeline.Credentials{Mechanism: "APIKEY", Username: "bob", Password: "k"})
	if err != nil || id == nil || id.Name != "bob" || id.Method != "apikey" || id.Tenant != "" {
		t.Fatalf("default identity %+v %v", id, err)
	}

	_, id, err = h.OnAuth(bg, testConn(), &pipeline.Credentials{Mechanism: "BEARER", Token: "t"})
	if err != nil || id == nil || id.Method != "token" || id.Tenant != "tok" {
		t.Fatalf("token identity %+v %v", id, err)
	}

	v, id, err = h.OnAuth(bg, testConn(), &pipeline.Credentials{Mechanism: "PLAIN", Username: "mallory", Password: "x"})
	if err != nil || v.Action != pipeline.Reject || id != nil {
		t.Fatalf("reject %+v %+v %v", v, id, err)
	}

	v, id, err = h.OnAuth(bg, testConn(), &pipeline.Credentials{Mechanism: "PLAIN", Username: "eve", Password: "x"})
	if err != nil || v.Action != pipeline.Continue || id != nil {
		t.Fatalf("continue %+v %+v %v", v, id, err)
	}
}

// TestAuthTenantName: on_auth cannot give an identity a tenant no API
// key or config could name (its captures would land in an inbox nobody
// can read): the hook fails with the rule.
func TestAuthTenantName(t *testing.T) {
	st, _, _ := inline(t, `on_auth = function(conn, creds) return sluice.accept{ tenant = creds.username } end`)
	h := st.(pipeline.AuthHook)
	_, id, err := h.OnAuth(bg, testConn(), &pipeline.Credentials{Mechanism: "PLAIN", Username: "bad/name", Password: "x"})
	if err == nil || id != nil || !strings.Contains(err.Error(), `tenant "bad/name" is not a tenant name`) {
		t.Fatalf("bad tenant: %+v %v", id, err)
	}
	_, id, err = h.OnAuth(bg, testConn(), &pipeline.Credentials{Mechanism: "PLAIN", Username: "good-name.1", Password: "x"})
	if err != nil || id == nil || id.Tenant != "good-name.1" {
		t.Fatalf("good tenant: %+v %v", id, err)
	}
}

func TestAuthThroughChain(t *testing.T) {
	st, _, _ := inline(t, authStage)
	ch, err := pipeline.Compile([]pipeline.Stage{st}, pipeline.ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	id, err := ch.Auth(bg, testConn(), &pipeline.Credentials{Mechanism: "PLAIN", Username: "alice", Password: "s3cret"})
	if err != nil || id.Tenant != "acme" {
		t.Fatalf("%+v %v", id, err)
	}
	_, err = ch.Auth(bg, testConn(), &pipeline.Credentials{Mechanism: "PLAIN", Username: "eve", Password: "x"})
	if r := pipeline.Reply(err); r.Code != 535 {
		t.Fatalf("reply %+v", r)
	}
}

func TestCredsErrors(t *testing.T) {
	for _, tt := range []struct{ body, want string }{
		{`return creds.user`, `creds has no field "user"`},
		{`creds.password = "x"`, `creds.password is read-only`},
		{`return sluice.accept{ name = 1 }`, `sluice.accept: key "name": want a string, got number`},
		{`return sluice.accept{ scopes = "send" , tenant = {} }`, `sluice.accept: key "tenant": want a string`},
	} {
		st, _, _ := inline(t, "on_auth = function(conn, creds)\n  "+tt.body+"\nend")
		_, _, err := st.(pipeline.AuthHook).OnAuth(bg, testConn(), &pipeline.Credentials{Mechanism: "PLAIN", Username: "u"})
		wantErrContains(t, err, "pipeline.lua:4", tt.want)
	}
}

func TestAuthKeepsVerifiedIdentity(t *testing.T) {
	st, _, _ := inline(t, `on_auth = function(conn, creds)
    assert(conn.identity.name == "key1")
    if conn.tenant == "acme" then return sluice.accept() end
    if conn.tenant == "move" then return sluice.accept{ tenant = "other", scopes = {} } end
    if conn.tenant == "deny" then return sluice.reject(535, "5.7.8", "revoked") end
  end`)
	ch, err := pipeline.Compile([]pipeline.Stage{st}, pipeline.ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	verified := func(tenant string) (*pipeline.Identity, error) {
		c := testConn()
		c.Source = pipeline.SourceHTTP
		id := &pipeline.Identity{Name: "key1", Tenant: tenant, Method: "apikey", Scopes: []string{"send"}}
		return ch.Verified(bg, c, &pipeline.Credentials{Mechanism: "APIKEY", Password: "secret"}, id)
	}
	id, err := verified("acme")
	if err != nil || id.Name != "key1" || id.Tenant != "acme" || id.Method != "apikey" || !id.HasScope("send") {
		t.Fatalf("plain accept changed the verified identity: %+v %v", id, err)
	}
	id, err = verified("move")
	if err != nil || id.Name != "key1" || id.Tenant != "other" || id.Method != "apikey" || len(id.Scopes) != 0 {
		t.Fatalf("accept{tenant} overlay: %+v %v", id, err)
	}
	if _, err = verified("deny"); pipeline.Reply(err).Code != 535 {
		t.Fatalf("reject: %v", err)
	}
	id, err = verified("keep")
	if err != nil || id.Tenant != "keep" {
		t.Fatalf("continue: %+v %v", id, err)
	}
}
