package server

import (
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/pipeline"
)

func TestSandboxRouterAndCheck(t *testing.T) {
	cfg, err := config.Parse("pipeline.lua", []byte(`
sluice.listen_smtp { addr = "127.0.0.1:2525" }
sluice.listen_smtp { addr = "127.0.0.1:2526", name = "box", sandbox = "ci" }
sluice.sandbox { tenants = { "acme-test" } }`))
	if err != nil {
		t.Fatal(err)
	}
	if err := checkSandbox(cfg); err != nil {
		t.Fatal(err)
	}
	route := sandboxRouter(cfg)
	for _, c := range []struct {
		conn   pipeline.Conn
		tenant string
		ok     bool
	}{
		{pipeline.Conn{Source: pipeline.SourceHTTP, Identity: &pipeline.Identity{Tenant: "acme-test"}}, "acme-test", true},
		{pipeline.Conn{Source: pipeline.SourceHTTP, Identity: &pipeline.Identity{Tenant: "acme"}}, "", false},
		{pipeline.Conn{Source: pipeline.SourceSMTP, Listener: "box"}, "ci", true},
		{pipeline.Conn{Source: pipeline.SourceSMTP, Listener: "127.0.0.1:2525"}, "", false},
		// A DSN about an acme-test message is that tenant's too.
		{pipeline.Conn{Source: pipeline.SourceDSN, Identity: &pipeline.Identity{Tenant: "acme-test"}}, "acme-test", true},
	} {
		if tn, ok := route(&c.conn); tn != c.tenant || ok != c.ok {
			t.Errorf("%+v: %q %v, want %q %v", c.conn, tn, ok, c.tenant, c.ok)
		}
	}
	cfg.Sandbox = nil
	if err := checkSandbox(cfg); err == nil || !strings.Contains(err.Error(), "needs sluice.sandbox") {
		t.Fatalf("listener sandbox without sluice.sandbox: %v", err)
	}
	if r := sandboxRouter(&config.Config{}); r != nil {
		t.Fatal("a router without sandboxes")
	}
}
