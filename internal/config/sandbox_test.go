package config

import (
	"strings"
	"testing"
	"time"
)

func TestSandboxConfig(t *testing.T) {
	cfg, err := Parse("/etc/sluice/pipeline.lua", []byte(`
sluice.spool { path = "/var/lib/sluice/spool" }
sluice.listen_smtp { addr = "127.0.0.1:2526", sandbox = "ci" }
sluice.sandbox {
  tenants = { "acme-test", "ci" },
  retention = { messages = 50, bytes = "1MiB", age = "0s" },
  links_allow = { "localhost:3000", "staging.acme.example" },
  simulate = {
    { match = "bounce@sim.test", reply = "550 5.1.1 No such user" },
    { tenant = "ci", match = "full+*@sim.test", reply = "452 4.2.2 Mailbox full", times = 2 },
    { match = "@slow.sim.test", delay = "20s" },
    { match = "x@sim.test", reply = "554" },
  },
}`))
	if err != nil {
		t.Fatal(err)
	}
	sb := cfg.Sandbox
	if sb == nil || len(sb.Tenants) != 2 || sb.Retention != (SandboxRetention{Messages: 50, Bytes: 1 << 20}) || len(sb.LinksAllow) != 2 || len(sb.Simulate) != 4 {
		t.Fatalf("%+v", sb)
	}
	if r := sb.Simulate[0]; r.Code != 550 || r.Enhanced != "5.1.1" || r.Text != "No such user" || r.Times != 0 {
		t.Errorf("rule 1: %+v", r)
	}
	if r := sb.Simulate[1]; r.Tenant != "ci" || r.Code != 452 || r.Times != 2 {
		t.Errorf("rule 2: %+v", r)
	}
	if r := sb.Simulate[2]; r.Code != 0 || r.Delay != 20*time.Second {
		t.Errorf("rule 3: %+v", r)
	}
	if r := sb.Simulate[3]; r.Code != 554 || r.Enhanced != "" || r.Text != "" {
		t.Errorf("rule 4: %+v", r)
	}
	if cfg.SMTP[0].Sandbox != "ci" {
		t.Errorf("listener sandbox %q", cfg.SMTP[0].Sandbox)
	}
	if p := cfg.SandboxPath(); p != "/var/lib/sluice/sandbox" {
		t.Errorf("default path %q", p)
	}
	cfg, err = Parse("pipeline.lua", []byte(`sluice.sandbox { }`))
	if err != nil || cfg.Sandbox.Retention != DefaultSandboxRetention() || cfg.Sandbox.SyncLag != DefaultSandboxSyncLag {
		t.Fatalf("defaults: %+v %v", cfg.Sandbox, err)
	}
	for src, want := range map[string]time.Duration{`sync_lag = "0s"`: 0, `sync_lag = "50ms"`: 50 * time.Millisecond, `sync_lag = "1ms"`: time.Millisecond} {
		cfg, err = Parse("pipeline.lua", []byte(`sluice.sandbox { `+src+` }`))
		if err != nil || cfg.Sandbox.SyncLag != want {
			t.Errorf("%s: %v %v, want %v", src, cfg, err, want)
		}
	}
}

func TestSandboxConfigErrors(t *testing.T) {
	for src, want := range map[string]string{
		`sluice.sandbox { tenant = { "a" } }`:                                        `unknown key "tenant"`,
		`sluice.sandbox { tenants = { "a b" } }`:                                     `key "tenants": "a b" is not a tenant name`,
		`sluice.sandbox { retention = { count = 1 } }`:                               `unknown key "retention.count"`,
		`sluice.sandbox { retention = { messages = -1 } }`:                           `key "retention.messages": must not be negative`,
		`sluice.sandbox { simulate = { { reply = "550" } } }`:                        `key "simulate[1].match": is required`,
		`sluice.sandbox { simulate = { { match = "a*b*@x" , reply = "550" } } }`:     `key "simulate[1].match"`,
		`sluice.sandbox { simulate = { { match = "a@x", reply = "hello" } } }`:       `key "simulate[1].reply": "hello": the reply must start with an SMTP code`,
		`sluice.sandbox { simulate = { { match = "a@x", reply = "550 4.1.1 x" } } }`: `does not match the reply code's class`,
		`sluice.sandbox { simulate = { { match = "a@x" } } }`:                        `give a reply`,
		`sluice.sandbox { links_allow = { "http://x/" } }`:                           `key "links_allow": "http://x/" is not a host name`,
		`sluice.sandbox { } sluice.sandbox { }`:                                      `called twice`,
		`sluice.sandbox { sync_lag = "2m" }`:                                         `key "sync_lag": 2m0s is longer than a minute`,
		`sluice.sandbox { sync_lag = "-1s" }`:                                        `key "sync_lag"`,
		`sluice.sandbox { sync_lag = "1ns" }`:                                        `key "sync_lag": 1ns is shorter than 1ms`,
		`sluice.sandbox { sync_lag = "999us" }`:                                      `key "sync_lag": 999µs is shorter than 1ms`,
		`sluice.listen_smtp { addr = ":25", sandbox = "a b" }`:                       `key "sandbox": "a b" is not a tenant name`,
	} {
		_, err := Parse("pipeline.lua", []byte(src))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want %q", src, err, want)
		}
	}
}
