package config

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/internal/luahost/sandbox"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

func init() {
	pipeline.Register("test_kind", func(name string, opts map[string]any) (pipeline.Stage, error) { return nil, nil })
	pipeline.Register("test_other", func(name string, opts map[string]any) (pipeline.Stage, error) { return nil, nil })
}

const policyScript = `local sluice = require("sluice")
return {
  on_rcpt = function(txn, rcpt) end,
  on_message = function(msg) end,
  _private = "ignored",
}
`

func TestLoadFull(t *testing.T) {
	dir := testutil.TempFiles(t, map[string]string{
		"pipeline.lua": `local sluice = require("sluice")
sluice.node { name = "relay-1", hostname = "mx.example.test" }
sluice.local_domains { "Example.TEST.", "example.org", "example.org" }
sluice.spool { path = "spool", memtable_mb = 32, wal_recycling = true, wal_zero_ahead = false }
sluice.listen_smtp {
  name = "mx", addr = "127.0.0.1:2525", hostname = "in.example.test",
  tls = { cert = "certs/c.pem", key = "/abs/k.pem" }, implicit_tls = true,
  auth = "required", relay_networks = { "127.0.0.1/32", "::1/128", "10.1.2.3/8", "192.0.2.1", "::ffff:192.0.2.2" },
  max_message_size = "10MiB", max_recipients = 50, max_line_length = 2000, max_connections = 10,
  read_timeout = "1m", write_timeout = "2m", data_timeout = "1d", bare_line_ending = "normalize", max_hops = 30, max_connections_per_ip = 5, max_connection_rate_per_ip = "30/10s", max_session_time = "10m", max_inflight_bytes = "64MiB", spill_threshold = "2MiB", requiretls = false,
}
sluice.listen_smtp { addr = "127.0.0.1:2587", max_message_size = 1000 }
sluice.listen_http { addr = "127.0.0.1:8025", max_request_size = "1KB", request_timeout = "15s", tls = { cert = "h.pem", key = "h.key" } }
sluice.delivery {
  hostname = "out.example.test", resolver = "127.0.0.1", port = 2526, tls = "required",
  tls_skip_verify = true, mta_sts = false, max_connections = 5, max_per_destination = 2, max_messages_per_conn = 7,
  connect_timeout = "3s", command_timeout = "4s", data_timeout = "5s", idle_timeout = "6s",
  retry = { initial = "10s", max = "10m", factor = 3, jitter = 0.1 }, queue_lifetime = "2d", delay_warning = "90m",
  own_names = { "MX1.Example.test.", "mx2.example.test" }, own_addresses = { "203.0.113.7", "198.51.100.0/28" }, }
sluice.events { file = "events.jsonl", kafka = { brokers = { "127.0.0.1:9092" }, topic = "d", bounce_topic = "b" } }
sluice.lua_options { timeout = "250ms", pool_size = 3, max_string = "2MiB" }
sluice.stage_timeout("10s")
sluice.stage("policy", sluice.lua("scripts/policy.lua"))
sluice.stage("auth", sluice.builtin.test_kind {
  users = "users.txt", n = 3, f = 1.5, on = true, list = { "a", "b" }, nested = { x = { 1, 2 } }, empty = {},
})
sluice.stage("plain", sluice.builtin.test_other())
sluice.stage("spam", sluice.plugin { cmd = "./bin/spam", args = { "-v" }, on_error = "continue", timeout = "2s" })
sluice.stage("path_plugin", sluice.plugin { cmd = "spamd" })
sluice.stage("routing", {
  on_route = function(msg, rcpt) return sluice.route.mx() end,
  on_rcpt = function() end,
  _helper = 1,
})
`,
		"scripts/policy.lua": policyScript,
	})
	file := filepath.Join(dir, "pipeline.lua")
	cfg, err := Load(file)
	if err != nil {
		t.Fatal(err)
	}
	cwd, _ := os.Getwd()
	if cfg.File != file || cfg.Node != "relay-1" || cfg.Hostname != "mx.example.test" || len(cfg.Source) == 0 {
		t.Errorf("node: %q %q %q", cfg.File, cfg.Node, cfg.Hostname)
	}
	if !reflect.DeepEqual(cfg.LocalDomains, []string{"example.test", "example.org"}) {
		t.Errorf("local domains %v", cfg.LocalDomains)
	}
	if cfg.Spool != (Spool{Path: filepath.Join(cwd, "spool"), MemtableMB: 32, WALRecycling: true, WALZeroAhead: false, MinFree: 100 << 20}) {
		t.Errorf("spool %+v", cfg.Spool)
	}
	if len(cfg.SMTP) != 2 {
		t.Fatalf("smtp %+v", cfg.SMTP)
	}
	want := SMTPListener{
		Name: "mx", Addr: "127.0.0.1:2525", Hostname: "in.example.test",
		TLS: &TLS{Cert: filepath.Join(dir, "certs/c.pem"), Key: "/abs/k.pem"}, ImplicitTLS: true,
		Auth: "required",
		RelayNetworks: []netip.Prefix{
			netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("::1/128"),
			netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.1/32"),
			netip.MustParsePrefix("192.0.2.2/32"),
		},
		MaxMessageSize: 10 << 20, MaxRecipients: 50, MaxLineLength: 2000, MaxConnections: 10,
		ReadTimeout: time.Minute, WriteTimeout: 2 * time.Minute, DataTimeout: 24 * time.Hour,
		BareLineEnding: "normalize", MaxHops: 30,
		MaxConnectionsPerIP: 5, MaxConnectionRatePerIP: 30, ConnectionRateWindow: 10 * time.Second,
		MaxSessionTime: 10 * time.Minute, MaxInflightBytes: 64 << 20, SpillThreshold: 2 << 20,
		DisableRequireTLS: true,
	}
	if !reflect.DeepEqual(cfg.SMTP[0], want) {
		t.Errorf("smtp[0]\n got %+v\nwant %+v", cfg.SMTP[0], want)
	}
	want2 := DefaultSMTPListener("127.0.0.1:2587")
	want2.Hostname = "mx.example.test"
	want2.MaxMessageSize = 1000
	if !reflect.DeepEqual(cfg.SMTP[1], want2) {
		t.Errorf("smtp[1]\n got %+v\nwant %+v", cfg.SMTP[1], want2)
	}
	if len(cfg.HTTP) != 1 || !reflect.DeepEqual(cfg.HTTP[0], HTTPListener{Addr: "127.0.0.1:8025", MaxRequestSize: 1000, RequestTimeout: 15 * time.Second, MaxInflightBytes: 256 << 20,
		TLS: &TLS{Cert: filepath.Join(dir, "h.pem"), Key: filepath.Join(dir, "h.key")}}) {
		t.Errorf("http %+v", cfg.HTTP)
	}
	wantD := Delivery{
		Hostname: "out.example.test", Resolver: "127.0.0.1:53", Port: 2526, TLS: "required", TLSSkipVerify: true, NoMTASTS: true,
		MaxConnections: 5, MaxPerDestination: 2, MaxMessagesPerConn: 7,
		ConnectTimeout: 3 * time.Second, CommandTimeout: 4 * time.Second, DataTimeout: 5 * time.Second, IdleTimeout: 6 * time.Second,
		RetryInitial: 10 * time.Second, RetryMax: 10 * time.Minute, RetryFactor: 3, RetryJitter: 0.1, QueueLifetime: 48 * time.Hour,
		DelayWarning: 90 * time.Minute,
		OwnNames:     []string{"mx1.example.test", "mx2.example.test"},
		OwnAddresses: []netip.Prefix{netip.MustParsePrefix("203.0.113.7/32"), netip.MustParsePrefix("198.51.100.0/28")},
	}
	if !reflect.DeepEqual(cfg.Delivery, wantD) {
		t.Errorf("delivery\n got %+v\nwant %+v", cfg.Delivery, wantD)
	}
	wantKafka := DefaultKafka()
	wantKafka.Brokers, wantKafka.Topic, wantKafka.BounceTopic = []string{"127.0.0.1:9092"}, "d", "b"
	if cfg.Events.File != filepath.Join(cwd, "events.jsonl") || !reflect.DeepEqual(cfg.Events.Kafka, wantKafka) {
		t.Errorf("events %+v %+v", cfg.Events, cfg.Events.Kafka)
	}
	if cfg.Lua != (Lua{Timeout: 250 * time.Millisecond, PoolSize: 3, MaxString: 2 << 20, MaxHeader: 64 << 10}) || cfg.StageTimeout != 10*time.Second {
		t.Errorf("lua %+v stage timeout %v", cfg.Lua, cfg.StageTimeout)
	}

	wantStages := []StageSpec{
		{Name: "policy", Kind: StageLua, Script: filepath.Join(dir, "scripts/policy.lua"), Hooks: []string{"on_rcpt", "on_message"}, Line: 23},
		{Name: "auth", Kind: StageBuiltin, Builtin: "test_kind", Options: map[string]any{
			"users": "users.txt", "n": int64(3), "f": 1.5, "on": true, "list": []any{"a", "b"},
			"nested": map[string]any{"x": []any{int64(1), int64(2)}}, "empty": []any{},
		}, Line: 24},
		{Name: "plain", Kind: StageBuiltin, Builtin: "test_other", Options: map[string]any{}, Line: 27},
		{Name: "spam", Kind: StagePlugin, Plugin: &PluginSpec{Cmd: filepath.Join(dir, "bin/spam"), Args: []string{"-v"}, OnError: "continue", Timeout: 2 * time.Second}, Line: 28},
		{Name: "path_plugin", Kind: StagePlugin, Plugin: &PluginSpec{Cmd: "spamd", OnError: "tempfail"}, Line: 29},
		{Name: "routing", Kind: StageInline, Hooks: []string{"on_rcpt", "on_route"}, Line: 30},
	}
	if len(cfg.Stages) != len(wantStages) {
		t.Fatalf("stages %+v", cfg.Stages)
	}
	for i := range wantStages {
		if !reflect.DeepEqual(cfg.Stages[i], wantStages[i]) {
			t.Errorf("stage %d\n got %#v\nwant %#v", i, cfg.Stages[i], wantStages[i])
		}
	}
}

func TestLoadDefaults(t *testing.T) {
	cfg, err := Parse("pipeline.lua", []byte(`sluice.listen_smtp { addr = "127.0.0.1:25" }`))
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if host == "" {
		host = "localhost"
	}
	cwd, _ := os.Getwd()
	if cfg.Hostname != host || cfg.Node != host {
		t.Errorf("hostname %q node %q, want %q", cfg.Hostname, cfg.Node, host)
	}
	want := DefaultSMTPListener("127.0.0.1:25")
	want.Hostname = host
	if !reflect.DeepEqual(cfg.SMTP, []SMTPListener{want}) {
		t.Errorf("smtp %+v", cfg.SMTP)
	}
	d := Defaults()
	d.Delivery.Hostname = host
	if !reflect.DeepEqual(cfg.Delivery, d.Delivery) {
		t.Errorf("delivery %+v", cfg.Delivery)
	}
	if cfg.Spool.Path != filepath.Join(cwd, "var/spool") || cfg.Spool.MemtableMB != 64 {
		t.Errorf("spool %+v", cfg.Spool)
	}
	if cfg.Events.File != filepath.Join(cwd, "var/events.jsonl") || cfg.Events.Kafka != nil {
		t.Errorf("events %+v", cfg.Events)
	}
	if cfg.Lua.Timeout != 100*time.Millisecond || cfg.Lua.PoolSize != DefaultLuaPoolSize() || cfg.StageTimeout != 30*time.Second {
		t.Errorf("lua %+v stage timeout %v", cfg.Lua, cfg.StageTimeout)
	}
	if len(cfg.Stages) != 0 || len(cfg.HTTP) != 0 || len(cfg.LocalDomains) != 0 {
		t.Errorf("unexpected values %+v", cfg)
	}

	// An empty file is a valid configuration (serve checks for listeners).
	if _, err := Parse("empty.lua", nil); err != nil {
		t.Fatal(err)
	}
	// Kafka topic defaults.
	cfg, err = Parse("p.lua", []byte(`sluice.events { kafka = { brokers = { "k:9092" } } }`))
	if err != nil || cfg.Events.Kafka.Topic != "sluice.delivery" || cfg.Events.Kafka.BounceTopic != "sluice.bounce" {
		t.Fatalf("%+v %v", cfg, err)
	}
	// HTTP listener defaults.
	cfg, err = Parse("p.lua", []byte(`sluice.listen_http { addr = "127.0.0.1:8025" }`))
	if err != nil || !reflect.DeepEqual(cfg.HTTP, []HTTPListener{{Addr: "127.0.0.1:8025", MaxRequestSize: 30 << 20, RequestTimeout: time.Minute, MaxInflightBytes: 256 << 20}}) {
		t.Fatalf("%+v %v", cfg.HTTP, err)
	}
	if cfg.Delivery.DelayWarning != 4*time.Hour {
		t.Errorf("delay_warning default %v, want 4h", cfg.Delivery.DelayWarning)
	}
	// delay_warning = "0" (or any zero duration) turns delay warnings off.
	for _, z := range []string{"0", "0s", " 0 "} {
		cfg, err = Parse("p.lua", []byte(`sluice.delivery { delay_warning = "`+z+`" }`))
		if err != nil || cfg.Delivery.DelayWarning != 0 {
			t.Fatalf("delay_warning = %q: %v %v", z, cfg.Delivery.DelayWarning, err)
		}
	}
	// Port 0 listeners may repeat.
	if _, err := Parse("p.lua", []byte(`sluice.listen_smtp { addr = "127.0.0.1:0" } sluice.listen_smtp { addr = "127.0.0.1:0" }`)); err != nil {
		t.Fatal(err)
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name, src, want string
	}{
		// unknown keys, per function
		{"listen_smtp unknown key", "\n\nsluice.listen_smtp { adress = 'x' }", `pipeline.lua:3: sluice.listen_smtp: unknown key "adress"`},
		{"listen_smtp nested unknown key", "sluice.listen_smtp { addr = ':25', tls = { crt = 'a', key = 'b' } }", `pipeline.lua:1: sluice.listen_smtp: unknown key "tls.crt"`},
		{"node unknown key", "sluice.node { nmae = 'x' }", `pipeline.lua:1: sluice.node: unknown key "nmae"`},
		{"spool unknown key", "sluice.spool { pth = 'x' }", `sluice.spool: unknown key "pth"`},
		{"http unknown key", "sluice.listen_http { addr = ':80', max_size = 1 }", `sluice.listen_http: unknown key "max_size"`},
		{"delivery unknown key", "sluice.delivery { retries = 1 }", `sluice.delivery: unknown key "retries"`},
		{"own name", "sluice.delivery { own_names = { 'a b' } }", `key "own_names": item 1: "a b" is not a host name`},
		{"own address", "sluice.delivery { own_addresses = { 'mx.test' } }", `key "own_addresses": item 1: "mx.test" is not a CIDR prefix`},
		{"delivery retry unknown key", "sluice.delivery { retry = { inital = '1s' } }", `sluice.delivery: unknown key "retry.inital"`},
		{"events unknown key", "sluice.events { fiel = 'x' }", `sluice.events: unknown key "fiel"`},
		{"kafka unknown key", "sluice.events { kafka = { broker = 'x' } }", `sluice.events: unknown key "kafka.broker"`},
		{"lua_options unknown key", "sluice.lua_options { timout = '1s' }", `sluice.lua_options: unknown key "timout"`},
		{"plugin unknown key", "sluice.stage('p', sluice.plugin { command = 'x' })", `sluice.plugin: unknown key "command"`},
		{"positional entry", "sluice.spool { 'x' }", `sluice.spool: want key = value pairs, got a list entry`},
		{"unknown function", "\nsluice.listen_smpt { addr = ':25' }", `pipeline.lua:2: sluice.listen_smpt does not exist`},
		// bad types
		{"not a table", "sluice.spool('x')", `sluice.spool: want a table of options as argument 1, got string`},
		{"bad type int", "sluice.listen_smtp { addr = ':25', max_recipients = 'ten' }", `sluice.listen_smtp: key "max_recipients": want an integer, got string`},
		{"bad type fraction", "sluice.listen_smtp { addr = ':25', max_recipients = 1.5 }", `key "max_recipients": want an integer, got number`},
		{"bad type bool", "sluice.listen_smtp { addr = ':25', implicit_tls = 'yes' }", `key "implicit_tls": want true or false, got string`},
		{"bad type string", "sluice.spool { path = 5 }", `sluice.spool: key "path": want a string, got number`},
		{"bad type list", "sluice.listen_smtp { addr = ':25', relay_networks = { 1 } }", `key "relay_networks": item 1: want a string, got number`},
		{"bad type table", "sluice.listen_smtp { addr = ':25', tls = 'x' }", `key "tls": want a table, got string`},
		{"non-positive", "sluice.listen_smtp { addr = ':25', max_connections = 0 }", `key "max_connections": must be larger than zero, got 0`},
		{"negative pool", "sluice.lua_options { pool_size = -1 }", `key "pool_size": must not be negative`},
		{"bad memtable", "sluice.spool { memtable_mb = 0 }", `key "memtable_mb": must be larger than zero`},
		{"wal_recycling not a boolean", "sluice.spool { wal_recycling = 'yes' }", `key "wal_recycling": want true or false, got string`},
		{"empty spool path", "sluice.spool { path = '' }", `key "path": must not be empty`},
		// durations
		{"bad duration", "sluice.listen_smtp { addr = ':25', read_timeout = '5x' }", `sluice.listen_smtp: key "read_timeout": invalid duration "5x"`},
		{"number duration", "sluice.listen_smtp { addr = ':25', read_timeout = 300 }", `key "read_timeout": want a duration string like "30s"`},
		{"zero duration", "sluice.delivery { connect_timeout = '0s' }", `key "connect_timeout": must be longer than zero`},
		{"bad delay_warning", "sluice.delivery { delay_warning = 'soon' }", `key "delay_warning": invalid duration "soon"`},
		{"negative delay_warning", "sluice.delivery { delay_warning = '-4h' }", `key "delay_warning": duration "-4h" is negative`},
		{"number delay_warning", "sluice.delivery { delay_warning = 0 }", `key "delay_warning": want a duration string`},
		{"negative duration", "sluice.delivery { idle_timeout = '-1s' }", `key "idle_timeout": duration "-1s" is negative`},
		{"bad stage_timeout", "sluice.stage_timeout('soon')", `sluice.stage_timeout: invalid duration "soon"`},
		{"stage_timeout type", "sluice.stage_timeout(30)", `sluice.stage_timeout: want a duration string like "30s", got number`},
		{"retry order", "sluice.delivery {\n retry = { initial = '2h', max = '1h' } }", `pipeline.lua:1: sluice.delivery: retry.initial (2h0m0s) is longer than retry.max (1h0m0s)`},
		{"retry factor", "sluice.delivery { retry = { factor = 0.5 } }", `key "retry.factor": must be at least 1`},
		{"retry jitter", "sluice.delivery { retry = { jitter = 2 } }", `key "retry.jitter": must be from 0 to 1`},
		// sizes
		{"bad size", "sluice.listen_smtp { addr = ':25', max_message_size = '25XB' }", `key "max_message_size": invalid size "25XB"`},
		{"zero size", "sluice.listen_smtp { addr = ':25', max_message_size = 0 }", `key "max_message_size": must be larger than zero`},
		{"size type", "sluice.listen_http { addr = ':80', max_request_size = true }", `key "max_request_size": want a number of bytes or a size like "25MB", got boolean`},
		// CIDR, enums, addresses
		{"bad CIDR", "sluice.listen_smtp { addr = ':25', relay_networks = { '127.0.0.1/32', '10.0.0/8' } }", `key "relay_networks": item 2: "10.0.0/8" is not a CIDR prefix`},
		{"bad CIDR bits", "sluice.listen_smtp { addr = ':25', relay_networks = { '10.0.0.0/33' } }", `"10.0.0.0/33" is not a CIDR prefix`},
		{"bad auth", "sluice.listen_smtp { addr = ':25', auth = 'yes' }", `key "auth": "yes" is not one of none, optional, required`},
		{"bad bare_line_ending", "sluice.listen_smtp { addr = ':25', bare_line_ending = 'fix' }", `key "bare_line_ending": "fix" is not one of reject, normalize`},
		{"bad delivery tls", "sluice.delivery { tls = 'always' }", `key "tls": "always" is not one of opportunistic, required, verify, dane-or-mta-sts, none`},
		{"missing addr", "sluice.listen_smtp { hostname = 'x' }", `sluice.listen_smtp: key "addr": is required`},
		{"bad addr", "sluice.listen_smtp { addr = 'localhost' }", `key "addr": "localhost" is not host:port`},
		{"bad port", "sluice.listen_smtp { addr = ':99999' }", `key "addr": ":99999": port must be a number from 0 to 65535`},
		{"duplicate addr", "sluice.listen_smtp { addr = '127.0.0.1:25' }\nsluice.listen_smtp { addr = '127.0.0.1:25' }", `pipeline.lua:2: sluice.listen_smtp: key "addr": "127.0.0.1:25" is already used by the listener at line 1`},
		{"duplicate addr smtp http", "sluice.listen_smtp { addr = ':8025' }\nsluice.listen_http { addr = ':8025' }", `pipeline.lua:2: sluice.listen_http: key "addr": ":8025" is already used`},
		{"duplicate listener name", "sluice.listen_smtp { name = 'a', addr = ':25' }\nsluice.listen_smtp { name = 'a', addr = ':26' }", `key "name": "a" is already used by the listener at line 1`},
		{"implicit tls without tls", "sluice.listen_smtp { addr = ':465', implicit_tls = true }", `key "implicit_tls": needs tls = { cert = ..., key = ... }`},
		{"tls without key", "sluice.listen_smtp { addr = ':25', tls = { cert = 'c' } }", `key "tls.key": is required`},
		{"bad hostname", "sluice.node { hostname = 'mx example' }", `key "hostname": "mx example" is not a host name`},
		{"bad node name", "sluice.node { name = 'a b' }", `key "name": "a b": use letters`},
		{"bad resolver", "sluice.delivery { resolver = '1.2.3.4:x' }", `key "resolver": "1.2.3.4:x" is not host:port`},
		{"bad delivery port", "sluice.delivery { port = 0 }", `key "port": must be from 1 to 65535`},
		{"bad broker", "sluice.events { kafka = { brokers = { 'k' } } }", `key "kafka.brokers": "k" is not host:port`},
		{"no brokers", "sluice.events { kafka = { topic = 't' } }", `key "kafka.brokers": is required`},
		{"bad local domain", "sluice.local_domains { 'a b' }", `sluice.local_domains: "a b" is not a domain name`},
		{"local domains not list", "sluice.local_domains('x')", `sluice.local_domains: want a list of strings, got string`},
		{"plugin on_error", "sluice.stage('p', sluice.plugin { cmd = 'x', on_error = 'ignore' })", `key "on_error": "ignore" is not one of tempfail, continue, reject`},
		{"plugin no cmd", "sluice.stage('p', sluice.plugin {})", `sluice.plugin: key "cmd": is required`},
		// singletons
		{"spool twice", "sluice.spool {}\n\nsluice.spool {}", `pipeline.lua:3: sluice.spool: called twice (first call at line 1)`},
		{"node twice", "sluice.node {}\nsluice.node {}", `sluice.node: called twice`},
		// stages
		{"duplicate stage", "sluice.stage('a', { on_rcpt = function() end })\nsluice.stage('a', { on_rcpt = function() end })", `pipeline.lua:2: sluice.stage: stage "a" is already defined at line 1`},
		{"unknown builtin", "\nsluice.stage('a', sluice.builtin.nope {})", `pipeline.lua:2: sluice.builtin.nope: unknown built-in stage "nope"; available: test_kind, test_other (see docs/config.md, sluice.builtin)`},
		{"builtin bad option", "sluice.stage('a', sluice.builtin.test_kind { f = function() end })", `sluice.builtin.test_kind: key "f": a function cannot be used as an option value`},
		{"builtin nested bad option", "sluice.stage('a', sluice.builtin.test_kind { x = { y = { [1] = 1, z = 2 } } })", `key "x.y": want a list or a table of key = value pairs, not a mix`},
		{"builtin list options", "sluice.stage('a', sluice.builtin.test_kind { 'a' })", `sluice.builtin.test_kind: want a table of key = value options, got a list`},
		{"builtin not table", "sluice.stage('a', sluice.builtin.test_kind('x'))", `sluice.builtin.test_kind: want a table of options, got string`},
		{"builtin assign", "sluice.builtin.x = 1", `sluice.builtin is read-only`},
		{"bad hook name", "sluice.stage('a', {\n  on_rcp = function() end,\n})", `pipeline.lua:1: sluice.stage("a"): unknown hook "on_rcp"`},
		{"hook not a function", "sluice.stage('a', { on_rcpt = 'x' })", `sluice.stage("a"): hook "on_rcpt" must be a function, got string`},
		{"hook table list", "sluice.stage('a', { function() end })", `sluice.stage("a"): a stage table has hook names as keys`},
		{"no hooks", "sluice.stage('a', { _x = 1 })", `sluice.stage("a"): the table defines no hook`},
		{"stage bad arg", "sluice.stage('a', 'policy.lua')", `sluice.stage("a"): want a table of hook functions, sluice.lua(...), sluice.builtin.KIND{...} or sluice.plugin{...} as argument 2, got string`},
		{"stage verdict arg", "sluice.stage('a', sluice.accept())", `sluice.stage("a"): argument 2 is a verdict, not a stage`},
		{"stage no name", "sluice.stage(nil, {})", `sluice.stage: want a stage name as argument 1, got nil`},
		{"stage bad name", "sluice.stage('a b', {})", `sluice.stage: stage name "a b": use letters`},
		{"missing script", "sluice.stage('a', sluice.lua('nope.lua'))", `pipeline.lua:1: sluice.lua: open nope.lua: no such file or directory`},
		{"script arg", "sluice.stage('a', sluice.lua())", `sluice.lua: want a script path as argument 1, got nil`},
		// Lua errors
		{"syntax error", "sluice.spool {\n  path = \n}\n", `pipeline.lua:3: syntax error near "}"`},
		{"syntax error eof", "function f()\n", `pipeline.lua:2: syntax error at end of file`},
		{"runtime error", "\nlocal t = nil\nt.x = 1", `pipeline.lua:3: attempt to index a non-table object(nil)`},
		{"error call", "error('custom problem')", `pipeline.lua:1: custom problem`},
		{"require os", "local os = require('os')", `pipeline.lua:1: require: module "os" is not available`},
		{"no io", "io.open('/etc/passwd')", `pipeline.lua:1: attempt to index a non-table object(nil)`},
		{"no dofile", "dofile('/etc/passwd')", `pipeline.lua:1: attempt to call a non-function object`},
		{"pcall swallowed", "local ok = pcall(sluice.spool, { pth = 1 })\nassert(not ok)", `pipeline.lua:1: sluice.spool: unknown key "pth"`},
		{"verdict error", "sluice.reject(200)", `sluice.reject: code must be a number from 500 to 599`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("pipeline.lua", []byte(tt.src))
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error\n  %q\ndoes not contain\n  %q", err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "pipeline.lua:") {
				t.Fatalf("error %q does not start with file:line", err)
			}
		})
	}
}

func TestScriptErrors(t *testing.T) {
	tests := []struct{ name, script, want string }{
		{"syntax", "return {\n  on_rcpt = function() end\n  on_mail = 1\n}", `pipeline.lua:1: sluice.lua: DIR/s.lua:3: syntax error near "on_mail"`},
		{"runtime", "local x = nil\nreturn x.y", `pipeline.lua:1: sluice.lua: DIR/s.lua:2: attempt to index a non-table object(nil)`},
		{"not a table", "return 'x'", `sluice.lua: DIR/s.lua must return a table of hook functions, got string`},
		{"nothing", "local a = 1", `sluice.lua: DIR/s.lua must return a table of hook functions, got nil`},
		{"bad hook", "return { on_rcp = function() end }", `sluice.lua: DIR/s.lua: unknown hook "on_rcp"`},
		{"hook not function", "return { on_rcpt = true }", `sluice.lua: DIR/s.lua: hook "on_rcpt" must be a function, got boolean`},
		{"no hook", "return {}", `sluice.lua: DIR/s.lua: the table defines no hook`},
		{"config function in script", "sluice.spool {}\nreturn {}", `DIR/s.lua:1: sluice.spool does not exist`},
		{"sandboxed", "return os.getenv('HOME')", `DIR/s.lua:1: attempt to index a non-table object(nil)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := testutil.TempFiles(t, map[string]string{
				"pipeline.lua": "sluice.stage('a', sluice.lua('s.lua'))",
				"s.lua":        tt.script,
			})
			_, err := Load(filepath.Join(dir, "pipeline.lua"))
			want := strings.ReplaceAll(tt.want, "DIR", dir)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("error\n  %v\ndoes not contain\n  %q", err, want)
			}
		})
	}
}

func TestEvalTimeout(t *testing.T) {
	old := evalTimeout
	evalTimeout = 100 * time.Millisecond
	defer func() { evalTimeout = old }()
	start := time.Now()
	_, err := Parse("pipeline.lua", []byte("sluice.spool {}\nwhile true do end"))
	if err == nil || !strings.Contains(err.Error(), "pipeline.lua:2: evaluation did not finish within 100ms") {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
	dir := testutil.TempFiles(t, map[string]string{
		"pipeline.lua": "sluice.stage('a', sluice.lua('s.lua'))",
		"s.lua":        "while true do end",
	})
	_, err = Load(filepath.Join(dir, "pipeline.lua"))
	if err == nil || !strings.Contains(err.Error(), "s.lua:1: evaluation did not finish") {
		t.Fatalf("err = %v", err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.lua"))
	if err == nil || !os.IsNotExist(unwrapAll(err)) {
		t.Fatalf("err = %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

func TestUnknownBuiltin(t *testing.T) {
	for _, tt := range []struct {
		known []string
		want  string
	}{
		{nil, `unknown built-in stage "auth": this version of sluice has no built-in stages yet; use a Lua stage (see docs/config.md, sluice.builtin)`},
		{[]string{"relay"}, `unknown built-in stage "auth"; available: relay (see docs/config.md, sluice.builtin)`},
		{[]string{"relay", "spf"}, `unknown built-in stage "auth"; available: relay, spf (see docs/config.md, sluice.builtin)`},
	} {
		if got := unknownBuiltin("auth", tt.known).Error(); got != tt.want {
			t.Errorf("known %v:\n got %s\nwant %s", tt.known, got, tt.want)
		}
	}
	// The exported form uses the registry (this test binary registers two).
	if got := UnknownBuiltin("x").Error(); !strings.Contains(got, "available: test_kind, test_other") {
		t.Errorf("UnknownBuiltin: %s", got)
	}
}

func TestRelativePathsResolveAgainstConfigDir(t *testing.T) {
	dir := testutil.TempFiles(t, map[string]string{
		"conf/pipeline.lua": `sluice.listen_smtp { addr = ":25", tls = { cert = "tls/c.pem", key = "../k.pem" } }
sluice.stage("p", sluice.lua("scripts/p.lua"))`,
		"conf/scripts/p.lua": policyScript,
	})
	cfg, err := Load(filepath.Join(dir, "conf/pipeline.lua"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.SMTP[0].TLS.Cert != filepath.Join(dir, "conf/tls/c.pem") || cfg.SMTP[0].TLS.Key != filepath.Join(dir, "k.pem") {
		t.Errorf("tls %+v", cfg.SMTP[0].TLS)
	}
	if cfg.Stages[0].Script != filepath.Join(dir, "conf/scripts/p.lua") {
		t.Errorf("script %q", cfg.Stages[0].Script)
	}
}

func TestConfigCanUseRuntimeModule(t *testing.T) {
	// Verdict and route helpers exist at load time too (for shared helper
	// code); sluice.log writes through slog.
	_, err := Parse("p.lua", []byte(`
local r = sluice.route.relay { host = "h", port = 25 }
assert(r.kind == "relay" and r.host == "h" and tostring(r) == "route relay relay:h:25")
local v = sluice.reject(554, "5.7.1", "no")
assert(v.action == "reject" and v.code == 554 and v.enhanced == "5.7.1" and v.text == "no")
assert(tostring(sluice.accept()) == "accept")
sluice.log.debug("loading")
`))
	if err != nil {
		t.Fatal(err)
	}
}

// TestFuncNames keeps Load and InstallRuntime in step: both must define
// every name in FuncNames, and nothing else.
func TestFuncNames(t *testing.T) {
	record := sandbox.New(nil)
	defer record.Close()
	ld := &loader{s: record, cfg: Defaults(), once: map[string]int{}, addrs: map[string]int{}, names: map[string]int{}, stages: map[string]int{}}
	base := keys(sandbox.New(nil).Module)
	ld.install()
	runtime := sandbox.New(nil)
	defer runtime.Close()
	InstallRuntime(runtime)
	want := append([]string(nil), FuncNames...)
	sort.Strings(want)
	for name, m := range map[string]*lua.LTable{"record": record.Module, "runtime": runtime.Module} {
		var got []string
		for _, k := range keys(m) {
			if !contains(base, k) {
				got = append(got, k)
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s mode defines %v, want %v", name, got, want)
		}
	}
}

func keys(t *lua.LTable) []string {
	var out []string
	t.ForEach(func(k, _ lua.LValue) { out = append(out, k.String()) })
	sort.Strings(out)
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestInstallRuntime(t *testing.T) {
	dir := testutil.TempFiles(t, map[string]string{
		"pipeline.lua": `
print("top level")
sluice.spool { path = "x" }
sluice.listen_smtp { addr = ":25" }
sluice.stage("script", sluice.lua("s.lua"))
sluice.stage("builtin", sluice.builtin.test_kind { a = 1 })
sluice.stage("plugin", sluice.plugin { cmd = "x" })
sluice.stage("inline", { on_rcpt = function(txn, rcpt) return sluice.reject(550, "5.7.1", "inline") end })
`,
		"s.lua": policyScript,
	})
	cfg, err := Load(filepath.Join(dir, "pipeline.lua"))
	if err != nil {
		t.Fatal(err)
	}
	// The replay must not touch the file system: remove the script.
	if err := os.Remove(filepath.Join(dir, "s.lua")); err != nil {
		t.Fatal(err)
	}
	proto, err := CompileSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := sandbox.New(nil)
	defer s.Close()
	stages := InstallRuntime(s)
	s.SetQuiet(true)
	if _, err := s.Run(context.Background(), proto, nil); err != nil {
		t.Fatal(err)
	}
	if got := keys(stages); !reflect.DeepEqual(got, []string{"inline"}) {
		t.Fatalf("runtime stages %v", got)
	}
	fn := stages.RawGetString("inline").(*lua.LTable).RawGetString("on_rcpt").(*lua.LFunction)
	out, err := s.Call(context.Background(), fn, 1, lua.LNil, lua.LNil)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := sandbox.ToVerdict(out[0]); !ok || v.Text != "inline" {
		t.Fatalf("verdict %v", out[0])
	}

	// CompileSource falls back to the file; and fails without either.
	if _, err := CompileSource(&Config{File: filepath.Join(dir, "pipeline.lua")}); err != nil {
		t.Fatal(err)
	}
	if _, err := CompileSource(&Config{}); err == nil {
		t.Fatal("CompileSource without source or file succeeded")
	}
}
