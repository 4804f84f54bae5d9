package config

import (
	"context"
	"encoding/base64"
	"fmt"
	"maps"
	"math"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/internal/luahost/sandbox"
	"github.com/sluice-mta/sluice/pipeline"
)

// FuncNames are the configuration functions of the sluice module, besides
// the verdict, route and log functions that the sandbox provides. Load
// installs them in recording mode and InstallRuntime in runtime mode; the
// two must define the same names.
var FuncNames = []string{
	"node", "local_domains", "spool", "listen_smtp", "listen_http", "listen_admin", "delivery",
	"events", "lua_options", "stage_timeout", "stage", "lua", "builtin", "plugin",
	"env", "read_file", "bounces", "suppression", "auth", "tokens", "redis", "shaping", "egress",
	"domains", "dns_server", "dkim_rotation", "logging", "tracking", "sandbox",
	"tls_reporting",
}

// loader records the configuration functions' calls into a Config.
type loader struct {
	s      *sandbox.State
	cfg    *Config
	file   string
	dir    string
	once   map[string]int // singleton function → line of its call
	addrs  map[string]int // listener address → line
	names  map[string]int // SMTP listener name → line
	stages map[string]int // stage name → line

	rotationLine int // line of sluice.dkim_rotation, 0 if not called
}

func (ld *loader) install() {
	L := ld.s.L
	m := ld.s.Module
	set := func(name string, fn lua.LGFunction) { m.RawSetString(name, L.NewFunction(fn)) }
	set("node", ld.node)
	set("local_domains", ld.localDomains)
	set("spool", ld.spool)
	set("listen_smtp", ld.listenSMTP)
	set("listen_http", ld.listenHTTP)
	set("listen_admin", ld.listenAdmin)
	set("delivery", ld.delivery)
	set("events", ld.events)
	set("bounces", ld.bounces)
	set("suppression", ld.suppression)
	set("auth", ld.auth)
	set("tokens", ld.tokens)
	set("redis", ld.redis)
	set("shaping", ld.shaping)
	set("egress", ld.egress)
	set("domains", ld.domains)
	set("dns_server", ld.dnsServer)
	set("dkim_rotation", ld.dkimRotation)
	set("logging", ld.logging)
	set("tracking", ld.tracking)
	set("sandbox", ld.sandbox)
	set("tls_reporting", ld.tlsReporting)
	set("lua_options", ld.luaOptions)
	set("stage_timeout", ld.stageTimeout)
	set("stage", ld.stage)
	set("lua", ld.lua)
	set("plugin", ld.plugin)
	(&secrets{s: ld.s, dir: ld.dir, record: ld.cfg}).install(m)
	builtin := L.NewTable()
	mt := L.NewTable()
	mt.RawSetString("__index", L.NewFunction(ld.builtinIndex))
	mt.RawSetString("__newindex", L.NewFunction(func(L *lua.LState) int {
		ld.s.Raise("sluice.builtin is read-only")
		return 0
	}))
	L.SetMetatable(builtin, mt)
	m.RawSetString("builtin", builtin)
}

// singleton raises an error when fn was called before.
func (ld *loader) singleton(fn string) {
	if line, ok := ld.once[fn]; ok {
		ld.s.Raise("%s: called twice (first call at line %d)", fn, line)
	}
	ld.once[fn] = ld.s.Line()
}

// --- value helpers -------------------------------------------------------

func (ld *loader) duration(o *sandbox.Opts, key string, dst *time.Duration) bool {
	v := o.Get(key)
	if v == lua.LNil {
		return false
	}
	str, ok := v.(lua.LString)
	if !ok {
		o.Fail(key, "want a duration string like \"30s\", \"5m\" or \"5d\", got %s", sandbox.Describe(v))
	}
	d, err := ParseDuration(string(str))
	if err != nil {
		o.Fail(key, "%v", err)
	}
	if d <= 0 {
		o.Fail(key, "must be longer than zero")
	}
	*dst = d
	return true
}

// durationOrZero is duration for a key where zero ("0") means "off".
func (ld *loader) durationOrZero(o *sandbox.Opts, key string, dst *time.Duration) bool {
	if v, ok := o.Get(key).(lua.LString); ok {
		if d, err := ParseDuration(string(v)); err == nil && d == 0 {
			*dst = 0
			return true
		}
	}
	return ld.duration(o, key, dst)
}

func (ld *loader) size(o *sandbox.Opts, key string, dst *int64) bool {
	if !ld.sizeOrZero(o, key, dst) {
		return false
	}
	if *dst == 0 {
		o.Fail(key, "must be larger than zero")
	}
	return true
}

// sizeOrZero is size where 0 is allowed (it means "off").
func (ld *loader) sizeOrZero(o *sandbox.Opts, key string, dst *int64) bool {
	v := o.Get(key)
	switch x := v.(type) {
	case *lua.LNilType:
		return false
	case lua.LNumber:
		var n int64
		o.Int64(key, &n)
		*dst = n
	case lua.LString:
		n, err := ParseSize(string(x))
		if err != nil {
			o.Fail(key, "%v", err)
		}
		*dst = n
	default:
		o.Fail(key, "want a number of bytes or a size like \"25MB\", got %s", sandbox.Describe(v))
	}
	if *dst < 0 {
		o.Fail(key, "must not be negative")
	}
	return true
}

// rate reads a rate "N/second", "N/minute", "N/hour" or "N/<duration>"
// ("30/10s") into a count and a window.
func (ld *loader) rate(o *sandbox.Opts, key string, n *int, window *time.Duration) bool {
	v := o.Get(key)
	if v == lua.LNil {
		return false
	}
	str, ok := v.(lua.LString)
	if !ok {
		o.Fail(key, "want a rate like \"60/minute\", got %s", sandbox.Describe(v))
	}
	c, w, err := ParseRate(string(str))
	if err != nil {
		o.Fail(key, "%v", err)
	}
	*n, *window = c, w
	return true
}

func (ld *loader) positive(o *sandbox.Opts, key string, dst *int) bool {
	if !o.Int(key, dst) {
		return false
	}
	if *dst <= 0 {
		o.Fail(key, "must be larger than zero, got %d", *dst)
	}
	return true
}

func (ld *loader) enum(o *sandbox.Opts, key string, dst *string, allowed ...string) bool {
	if !o.String(key, dst) {
		return false
	}
	for _, a := range allowed {
		if *dst == a {
			return true
		}
	}
	o.Fail(key, "%q is not one of %s", *dst, strings.Join(allowed, ", "))
	return false
}

func (ld *loader) tls(o *sandbox.Opts, key string) *TLS {
	sub := o.Sub(key, "cert", "key")
	if sub == nil {
		return nil
	}
	t := &TLS{}
	if !sub.String("cert", &t.Cert) || t.Cert == "" {
		sub.Fail("cert", "is required")
	}
	if !sub.String("key", &t.Key) || t.Key == "" {
		sub.Fail("key", "is required")
	}
	t.Cert, t.Key = ld.resolve(t.Cert), ld.resolve(t.Key)
	return t
}

// listenAddr checks a host:port listening address and that no other
// listener uses it (port 0, "any free port", may repeat).
func (ld *loader) listenAddr(o *sandbox.Opts, key string) string {
	var addr string
	if !o.String(key, &addr) || addr == "" {
		o.Fail(key, "is required")
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		o.Fail(key, "%q is not host:port", addr)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		o.Fail(key, "%q: port must be a number from 0 to 65535", addr)
	}
	if p != 0 {
		if line, dup := ld.addrs[addr]; dup {
			o.Fail(key, "%q is already used by the listener at line %d", addr, line)
		}
		ld.addrs[addr] = ld.s.Line()
	}
	return addr
}

// --- functions ------------------------------------------------------------

// sluice.node { name = "relay-1", hostname = "mx.example.test" }
func (ld *loader) node(L *lua.LState) int {
	const fn = "sluice.node"
	ld.singleton(fn)
	o := ld.s.CheckOpts(1, fn, "name", "hostname")
	if o.String("name", &ld.cfg.Node) && !validName(ld.cfg.Node) {
		o.Fail("name", "%q: use letters, digits, '.', '-' and '_' (at most 64)", ld.cfg.Node)
	}
	if o.String("hostname", &ld.cfg.Hostname) && !validHostname(ld.cfg.Hostname) {
		o.Fail("hostname", "%q is not a host name", ld.cfg.Hostname)
	}
	return 0
}

// sluice.local_domains { "example.test", "example.org" }
func (ld *loader) localDomains(L *lua.LState) int {
	const fn = "sluice.local_domains"
	ld.singleton(fn)
	list, err := sandbox.StringList(L.Get(1))
	if err != nil {
		ld.s.Raise("%s: %v", fn, err)
	}
	seen := map[string]bool{}
	for _, d := range list {
		d = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(d), "."))
		if !validHostname(d) {
			ld.s.Raise("%s: %q is not a domain name", fn, d)
		}
		if !seen[d] {
			seen[d] = true
			ld.cfg.LocalDomains = append(ld.cfg.LocalDomains, d)
		}
	}
	return 0
}

// sluice.spool { path = "./var/spool", memtable_mb = 64 }
func (ld *loader) spool(L *lua.LState) int {
	const fn = "sluice.spool"
	ld.singleton(fn)
	o := ld.s.CheckOpts(1, fn, "path", "memtable_mb", "min_free", "wal_recycling", "wal_zero_ahead")
	if o.String("path", &ld.cfg.Spool.Path) && ld.cfg.Spool.Path == "" {
		o.Fail("path", "must not be empty")
	}
	ld.positive(o, "memtable_mb", &ld.cfg.Spool.MemtableMB)
	o.Bool("wal_recycling", &ld.cfg.Spool.WALRecycling)
	o.Bool("wal_zero_ahead", &ld.cfg.Spool.WALZeroAhead)
	if ld.sizeOrZero(o, "min_free", &ld.cfg.Spool.MinFree) && ld.cfg.Spool.MinFree < 0 {
		o.Fail("min_free", "must not be negative")
	}
	return 0
}

// sluice.listen_smtp { addr = "127.0.0.1:2525", ... }
func (ld *loader) listenSMTP(L *lua.LState) int {
	const fn = "sluice.listen_smtp"
	o := ld.s.CheckOpts(1, fn, "name", "addr", "hostname", "tls", "implicit_tls", "auth", "auth_insecure",
		"relay_networks", "max_message_size", "max_recipients", "max_line_length",
		"max_connections", "read_timeout", "write_timeout", "data_timeout", "bare_line_ending", "max_hops",
		"max_connections_per_ip", "max_connection_rate_per_ip", "max_session_time", "max_inflight_bytes", "spill_threshold", "sandbox", "requiretls")
	l := DefaultSMTPListener(ld.listenAddr(o, "addr"))
	if o.String("name", &l.Name) {
		if !validName(l.Name) {
			o.Fail("name", "%q: use letters, digits, '.', '-' and '_' (at most 64)", l.Name)
		}
		if line, dup := ld.names[l.Name]; dup {
			o.Fail("name", "%q is already used by the listener at line %d", l.Name, line)
		}
		ld.names[l.Name] = ld.s.Line()
	}
	if o.String("hostname", &l.Hostname) && !validHostname(l.Hostname) {
		o.Fail("hostname", "%q is not a host name", l.Hostname)
	}
	l.TLS = ld.tls(o, "tls")
	o.Bool("implicit_tls", &l.ImplicitTLS)
	if l.ImplicitTLS && l.TLS == nil {
		o.Fail("implicit_tls", "needs tls = { cert = ..., key = ... }")
	}
	ld.enum(o, "auth", &l.Auth, "none", "optional", "required")
	o.Bool("auth_insecure", &l.AuthInsecure)
	var nets []string
	if o.Strings("relay_networks", &nets) {
		for i, n := range nets {
			p, err := parsePrefix(n)
			if err != nil {
				o.Fail("relay_networks", "item %d: %v", i+1, err)
			}
			l.RelayNetworks = append(l.RelayNetworks, p)
		}
	}
	ld.size(o, "max_message_size", &l.MaxMessageSize)
	ld.positive(o, "max_recipients", &l.MaxRecipients)
	ld.positive(o, "max_line_length", &l.MaxLineLength)
	ld.positive(o, "max_connections", &l.MaxConnections)
	ld.duration(o, "read_timeout", &l.ReadTimeout)
	ld.duration(o, "write_timeout", &l.WriteTimeout)
	ld.duration(o, "data_timeout", &l.DataTimeout)
	ld.enum(o, "bare_line_ending", &l.BareLineEnding, "reject", "normalize")
	ld.positive(o, "max_hops", &l.MaxHops)
	ld.positive(o, "max_connections_per_ip", &l.MaxConnectionsPerIP)
	ld.rate(o, "max_connection_rate_per_ip", &l.MaxConnectionRatePerIP, &l.ConnectionRateWindow)
	ld.duration(o, "max_session_time", &l.MaxSessionTime)
	ld.size(o, "max_inflight_bytes", &l.MaxInflightBytes)
	ld.size(o, "spill_threshold", &l.SpillThreshold)
	if o.String("sandbox", &l.Sandbox) && !pipeline.ValidTenant(l.Sandbox) {
		o.Fail("sandbox", "%q is not a tenant name (1 to 64 letters, digits, '.', '_' or '-')", l.Sandbox)
	}
	requireTLS := true
	if o.Bool("requiretls", &requireTLS) {
		l.DisableRequireTLS = !requireTLS
	}
	ld.cfg.SMTP = append(ld.cfg.SMTP, l)
	return 0
}

// parsePrefix accepts "10.0.0.0/8", "::1/128" and a bare address (a
// single-host prefix). Host bits are cleared ("10.1.2.3/8" is 10.0.0.0/8).
func parsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR prefix like \"10.0.0.0/8\" or an IP address", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR prefix like \"10.0.0.0/8\" or an IP address", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// sluice.listen_http { addr = "127.0.0.1:8025", tls = {...}, max_request_size = "30MiB", request_timeout = "1m" }
func (ld *loader) listenHTTP(L *lua.LState) int {
	const fn = "sluice.listen_http"
	o := ld.s.CheckOpts(1, fn, "addr", "tls", "max_request_size", "request_timeout", "max_inflight_bytes", "access_log")
	h := DefaultHTTPListener(ld.listenAddr(o, "addr"))
	o.Bool("access_log", &h.AccessLog)
	h.TLS = ld.tls(o, "tls")
	ld.size(o, "max_request_size", &h.MaxRequestSize)
	ld.duration(o, "request_timeout", &h.RequestTimeout)
	ld.size(o, "max_inflight_bytes", &h.MaxInflightBytes)
	ld.cfg.HTTP = append(ld.cfg.HTTP, h)
	return 0
}

// sluice.listen_admin { addr = "127.0.0.1:9101", allow = { "127.0.0.1/32", "::1/128" } }
func (ld *loader) listenAdmin(L *lua.LState) int {
	const fn = "sluice.listen_admin"
	ld.singleton(fn)
	o := ld.s.CheckOpts(1, fn, "addr", "allow")
	a := &AdminListener{Addr: ld.listenAddr(o, "addr")}
	var allow []string
	if o.Strings("allow", &allow) {
		for i, s := range allow {
			p, err := parsePrefix(s)
			if err != nil {
				o.Fail("allow", "item %d: %v", i+1, err)
			}
			a.Allow = append(a.Allow, p)
		}
	} else {
		a.Allow = DefaultAdminAllow()
	}
	ld.cfg.Admin = a
	return 0
}

// sluice.delivery { ... }
func (ld *loader) delivery(L *lua.LState) int {
	const fn = "sluice.delivery"
	ld.singleton(fn)
	o := ld.s.CheckOpts(1, fn, "hostname", "resolver", "port", "tls", "tls_skip_verify", "mta_sts", "dane",
		"max_connections", "max_per_destination", "max_messages_per_conn",
		"connect_timeout", "command_timeout", "data_timeout", "idle_timeout", "retry", "queue_lifetime", "delay_warning",
		"own_names", "own_addresses")
	d := &ld.cfg.Delivery
	if o.String("hostname", &d.Hostname) && !validHostname(d.Hostname) {
		o.Fail("hostname", "%q is not a host name", d.Hostname)
	}
	if o.String("resolver", &d.Resolver) {
		r := d.Resolver
		if _, _, err := net.SplitHostPort(r); err != nil {
			r = net.JoinHostPort(strings.Trim(r, "[]"), "53")
		}
		host, port, err := net.SplitHostPort(r)
		p, perr := strconv.Atoi(port)
		if err != nil || host == "" || perr != nil || p <= 0 || p > 65535 {
			o.Fail("resolver", "%q is not host:port (or host, for port 53)", d.Resolver)
		}
		d.Resolver = r
	}
	if o.Int("port", &d.Port) && (d.Port <= 0 || d.Port > 65535) {
		o.Fail("port", "must be from 1 to 65535, got %d", d.Port)
	}
	ld.enum(o, "tls", &d.TLS, pipeline.TLSPolicies...)
	o.Bool("tls_skip_verify", &d.TLSSkipVerify)
	if on := true; o.Bool("mta_sts", &on) {
		d.NoMTASTS = !on
	}
	o.Bool("dane", &d.DANE)
	ld.positive(o, "max_connections", &d.MaxConnections)
	ld.positive(o, "max_per_destination", &d.MaxPerDestination)
	ld.positive(o, "max_messages_per_conn", &d.MaxMessagesPerConn)
	ld.duration(o, "connect_timeout", &d.ConnectTimeout)
	ld.duration(o, "command_timeout", &d.CommandTimeout)
	ld.duration(o, "data_timeout", &d.DataTimeout)
	ld.duration(o, "idle_timeout", &d.IdleTimeout)
	ld.duration(o, "queue_lifetime", &d.QueueLifetime)
	ld.durationOrZero(o, "delay_warning", &d.DelayWarning)
	var names, addrs []string
	if o.Strings("own_names", &names) {
		for i, n := range names {
			n = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(n), "."))
			if !validHostname(n) {
				o.Fail("own_names", "item %d: %q is not a host name", i+1, names[i])
			}
			d.OwnNames = append(d.OwnNames, n)
		}
	}
	if o.Strings("own_addresses", &addrs) {
		for i, a := range addrs {
			p, err := parsePrefix(a)
			if err != nil {
				o.Fail("own_addresses", "item %d: %v", i+1, err)
			}
			d.OwnAddresses = append(d.OwnAddresses, p)
		}
	}
	if r := o.Sub("retry", "initial", "max", "factor", "jitter"); r != nil {
		ld.duration(r, "initial", &d.RetryInitial)
		ld.duration(r, "max", &d.RetryMax)
		if r.Float("factor", &d.RetryFactor) && d.RetryFactor < 1 {
			r.Fail("factor", "must be at least 1, got %g", d.RetryFactor)
		}
		if r.Float("jitter", &d.RetryJitter) && (d.RetryJitter < 0 || d.RetryJitter > 1) {
			r.Fail("jitter", "must be from 0 to 1, got %g", d.RetryJitter)
		}
	}
	return 0
}

// sluice.events { file = "./var/events.jsonl", kafka = { brokers = {...} } }
func (ld *loader) events(L *lua.LState) int {
	const fn = "sluice.events"
	ld.singleton(fn)
	o := ld.s.CheckOpts(1, fn, "file", "kafka", "webhooks")
	if o.String("file", &ld.cfg.Events.File) && ld.cfg.Events.File == "" {
		o.Fail("file", "must not be empty")
	}
	if k := o.Sub("kafka", "brokers", "topic", "bounce_topic", "routes", "types", "acks", "tls", "sasl", "dead_letter",
		"missing_topic_wait", "batch_timeout", "max_message_bytes", "max_backlog", "on_backlog_full"); k != nil {
		kc := DefaultKafka()
		if !k.Strings("brokers", &kc.Brokers) || len(kc.Brokers) == 0 {
			k.Fail("brokers", "is required: a list of host:port")
		}
		for _, b := range kc.Brokers {
			if _, _, err := net.SplitHostPort(b); err != nil {
				k.Fail("brokers", "%q is not host:port", b)
			}
		}
		if k.String("topic", &kc.Topic) && !validTopic(kc.Topic) {
			k.Fail("topic", "%q is not a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -, not \".\" or \"..\")", kc.Topic)
		}
		if k.String("bounce_topic", &kc.BounceTopic) && !validTopic(kc.BounceTopic) {
			k.Fail("bounce_topic", "%q is not a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -, not \".\" or \"..\")", kc.BounceTopic)
		}
		ld.kafkaMore(k, kc)
		ld.cfg.Events.Kafka = kc
	}
	ld.webhooks(o)
	return 0
}

// sluice.bounces { rules = { "/etc/sluice/bounce.toml" }, default_rules = true }
func (ld *loader) bounces(L *lua.LState) int {
	const fn = "sluice.bounces"
	ld.singleton(fn)
	o := ld.s.CheckOpts(1, fn, "rules", "default_rules")
	var rules []string
	if o.Strings("rules", &rules) {
		for _, r := range rules {
			if r == "" {
				o.Fail("rules", "a rule file path must not be empty")
			}
			ld.cfg.Bounces.Rules = append(ld.cfg.Bounces.Rules, ld.resolve(r))
		}
	}
	o.Bool("default_rules", &ld.cfg.Bounces.DefaultRules)
	if len(ld.cfg.Bounces.Rules) == 0 && !ld.cfg.Bounces.DefaultRules {
		o.Fail("default_rules", "is false and no rules are given: every bounce would be Uncategorized; give rules = { ... } or keep the default rules")
	}
	return 0
}

// webhooks parses sluice.events { webhooks = { { name = ..., url = ... }, ... } }.
func (ld *loader) webhooks(o *sandbox.Opts) {
	seen := map[string]bool{}
	for _, w := range o.List("webhooks", "name", "url", "secret", "types", "tenants", "timeout",
		"dead_letter_after", "dead_letter", "concurrency") {
		wh := Webhook{Timeout: 10 * time.Second, DeadLetterAfter: 24 * time.Hour, Concurrency: 4}
		if !w.String("name", &wh.Name) || !validName(wh.Name) {
			w.Fail("name", "is required: letters, digits, '.', '_' or '-', at most 64")
		}
		if seen[wh.Name] {
			w.Fail("name", "%q names two webhooks; each needs its own name (it names its cursor)", wh.Name)
		}
		seen[wh.Name] = true
		if !w.String("url", &wh.URL) {
			w.Fail("url", "is required: the http:// or https:// URL to POST events to")
		}
		if u, err := url.Parse(wh.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			w.Fail("url", "want an absolute http:// or https:// URL")
		}
		if !w.String("secret", &wh.Secret) {
			w.Fail("secret", `is required: "whsec_" and base64, e.g. secret = sluice.env("WH_SECRET")`)
		}
		b64, ok := strings.CutPrefix(wh.Secret, "whsec_")
		if key, err := base64.StdEncoding.DecodeString(b64); !ok || err != nil || len(key) < 24 {
			// Never the value in the message: it is a secret.
			w.Fail("secret", `want "whsec_" followed by the base64 of at least 24 random bytes; make one with: echo "whsec_$(openssl rand -base64 32)"`)
		}
		if w.Strings("types", &wh.Types) {
			for _, t := range wh.Types {
				if !slices.Contains(pipeline.EventTypes, t) {
					w.Fail("types", "unknown event type %q; known: %s", t, strings.Join(pipeline.EventTypes, ", "))
				}
			}
		}
		w.Strings("tenants", &wh.Tenants)
		ld.duration(w, "timeout", &wh.Timeout)
		ld.duration(w, "dead_letter_after", &wh.DeadLetterAfter)
		if w.String("dead_letter", &wh.DeadLetter) && wh.DeadLetter == "" {
			w.Fail("dead_letter", "must not be empty (leave it out for the default beside the events file)")
		}
		if w.Int("concurrency", &wh.Concurrency) && (wh.Concurrency < 1 || wh.Concurrency > 256) {
			w.Fail("concurrency", "must be from 1 to 256")
		}
		ld.cfg.Events.Webhooks = append(ld.cfg.Events.Webhooks, wh)
	}
}

// sluice.lua_options { timeout = "100ms", pool_size = 0, max_string = "1MiB", max_header = "64KiB" }
func (ld *loader) luaOptions(L *lua.LState) int {
	const fn = "sluice.lua_options"
	ld.singleton(fn)
	o := ld.s.CheckOpts(1, fn, "timeout", "pool_size", "max_string", "max_header")
	if ld.size(o, "max_string", &ld.cfg.Lua.MaxString) && ld.cfg.Lua.MaxString > 1<<30 {
		o.Fail("max_string", "must be at most 1GiB")
	}
	if ld.size(o, "max_header", &ld.cfg.Lua.MaxHeader) && ld.cfg.Lua.MaxHeader > 1<<30 {
		o.Fail("max_header", "must be at most 1GiB")
	}
	ld.duration(o, "timeout", &ld.cfg.Lua.Timeout)
	if o.Int("pool_size", &ld.cfg.Lua.PoolSize) && ld.cfg.Lua.PoolSize < 0 {
		o.Fail("pool_size", "must not be negative (0 means 2*GOMAXPROCS+8)")
	}
	return 0
}

// sluice.stage_timeout("30s")
func (ld *loader) stageTimeout(L *lua.LState) int {
	const fn = "sluice.stage_timeout"
	ld.singleton(fn)
	v := L.Get(1)
	str, ok := v.(lua.LString)
	if !ok {
		ld.s.Raise("%s: want a duration string like \"30s\", got %s", fn, sandbox.Describe(v))
	}
	d, err := ParseDuration(string(str))
	if err != nil {
		ld.s.Raise("%s: %v", fn, err)
	}
	if d <= 0 {
		ld.s.Raise("%s: must be longer than zero", fn)
	}
	ld.cfg.StageTimeout = d
	return 0
}

// sluice.stage(name, X)
func (ld *loader) stage(L *lua.LState) int {
	const fn = "sluice.stage"
	nv := L.Get(1)
	ns, ok := nv.(lua.LString)
	if !ok {
		ld.s.Raise("%s: want a stage name as argument 1, got %s", fn, sandbox.Describe(nv))
	}
	name := string(ns)
	if !validName(name) {
		ld.s.Raise("%s: stage name %q: use letters, digits, '.', '-' and '_' (at most 64)", fn, name)
	}
	line := ld.s.Line()
	if prev, dup := ld.stages[name]; dup {
		ld.s.Raise("%s: stage %q is already defined at line %d", fn, name, prev)
	}
	var spec StageSpec
	switch x := L.Get(2).(type) {
	case *lua.LTable:
		hooks, err := sandbox.HookNames(x)
		if err != nil {
			ld.s.Raise("%s(%q): %v", fn, name, err)
		}
		if len(hooks) == 0 {
			ld.s.Raise("%s(%q): the table defines no hook (on_connect, on_rcpt, ...)", fn, name)
		}
		spec = StageSpec{Kind: StageInline, Hooks: hooks}
	case *lua.LUserData:
		p, ok := x.Value.(*StageSpec)
		if !ok {
			ld.s.Raise("%s(%q): argument 2 is %s, not a stage", fn, name, sandbox.Describe(x))
		}
		spec = *p
	default:
		ld.s.Raise("%s(%q): want a table of hook functions, sluice.lua(...), sluice.builtin.KIND{...} or sluice.plugin{...} as argument 2, got %s",
			fn, name, sandbox.Describe(x))
	}
	spec.Name = name
	spec.Line = line
	ld.stages[name] = line
	ld.cfg.Stages = append(ld.cfg.Stages, spec)
	return 0
}

func (ld *loader) pushSpec(spec *StageSpec) int {
	ud := ld.s.L.NewUserData()
	ud.Value = spec
	ld.s.L.Push(ud)
	return 1
}

// sluice.lua("scripts/policy.lua")
func (ld *loader) lua(L *lua.LState) int {
	const fn = "sluice.lua"
	pv := L.Get(1)
	ps, ok := pv.(lua.LString)
	if !ok || ps == "" {
		ld.s.Raise("%s: want a script path as argument 1, got %s", fn, sandbox.Describe(pv))
	}
	path := ld.resolve(string(ps))
	proto, err := sandbox.CompileFile(path)
	if err != nil {
		ld.s.Raise("%s: %v", fn, err)
	}
	// Run the script once to check that it returns a stage table. Its
	// top-level code runs again in every pooled state at run time.
	st := sandbox.New(ld.s.Logger().With("script", path))
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), evalTimeout)
	defer cancel()
	ret, err := st.Run(ctx, proto, nil)
	if err != nil {
		ld.s.Raise("%s: %s", fn, evalError(path, err))
	}
	t, ok := ret.(*lua.LTable)
	if !ok {
		ld.s.Raise("%s: %s must return a table of hook functions, got %s", fn, path, sandbox.Describe(ret))
	}
	hooks, err := sandbox.HookNames(t)
	if err != nil {
		ld.s.Raise("%s: %s: %v", fn, path, err)
	}
	if len(hooks) == 0 {
		ld.s.Raise("%s: %s: the table defines no hook (on_connect, on_rcpt, ...)", fn, path)
	}
	return ld.pushSpec(&StageSpec{Kind: StageLua, Script: path, Hooks: hooks})
}

// sluice.builtin.KIND — looks KIND up in pipeline's registry.
func (ld *loader) builtinIndex(L *lua.LState) int {
	kind := L.Get(2).String()
	if _, ok := pipeline.Lookup(kind); !ok {
		ld.s.Raise("sluice.builtin.%s: %v", kind, UnknownBuiltin(kind))
	}
	fn := "sluice.builtin." + kind
	L.Push(L.NewFunction(func(L *lua.LState) int {
		opts := map[string]any{}
		switch v := L.Get(1).(type) {
		case *lua.LNilType:
		case *lua.LTable:
			g, err := sandbox.ToGo(v)
			if err != nil {
				ld.s.Raise("%s: %v", fn, err)
			}
			switch m := g.(type) {
			case map[string]any:
				opts = m
			case []any:
				if len(m) > 0 {
					ld.s.Raise("%s: want a table of key = value options, got a list", fn)
				}
			}
		default:
			ld.s.Raise("%s: want a table of options, got %s", fn, sandbox.Describe(v))
		}
		return ld.pushSpec(&StageSpec{Kind: StageBuiltin, Builtin: kind, Options: opts})
	}))
	return 1
}

// UnknownBuiltin is the error for a built-in stage kind that is not in
// pipeline's registry. It lists the kinds that are, or says there are none,
// and points to the documentation, e.g.
//
//	unknown built-in stage "auth": this version of sluice has no built-in stages yet; use a Lua stage (see docs/config.md, sluice.builtin)
func UnknownBuiltin(kind string) error {
	return unknownBuiltin(kind, pipeline.Kinds())
}

func unknownBuiltin(kind string, known []string) error {
	if len(known) == 0 {
		return fmt.Errorf("unknown built-in stage %q: this version of sluice has no built-in stages yet; "+
			"use a Lua stage (see docs/config.md, sluice.builtin)", kind)
	}
	return fmt.Errorf("unknown built-in stage %q; available: %s (see docs/config.md, sluice.builtin)",
		kind, strings.Join(known, ", "))
}

// pluginHooks are the hooks the plugin protocol carries (no on_auth).
var pluginHooks = []string{"on_connect", "on_helo", "on_mail", "on_rcpt", "on_message", "on_route", "on_event"}

// sluice.plugin { cmd = "./bin/x", args = {...}, on_error = "tempfail", timeout = "5s" }
func (ld *loader) plugin(L *lua.LState) int {
	const fn = "sluice.plugin"
	o := ld.s.CheckOpts(1, fn, "cmd", "args", "on_error", "timeout", "env", "max_in_flight", "instances", "config", "hooks")
	p := &PluginSpec{OnError: OnErrorTempfail}
	if !o.String("cmd", &p.Cmd) || p.Cmd == "" {
		o.Fail("cmd", "is required")
	}
	if strings.ContainsRune(p.Cmd, '/') {
		p.Cmd = ld.resolve(p.Cmd)
		if !strings.ContainsRune(p.Cmd, '/') {
			// "./plugin" beside a config file named without a directory
			// ("-c pipeline.lua"): filepath.Join dropped the "./", and a
			// bare name would be looked up in $PATH instead.
			p.Cmd = "./" + p.Cmd
		}
	}
	// A bare string would be one argument; a list is what is meant (and
	// what docs/plugins.md shows), so say so rather than guess.
	for _, key := range []string{"args", "hooks"} {
		switch v := o.Get(key).(type) {
		case lua.LString:
			o.Fail(key, "want a list of strings, e.g. %s = { %q }, got a string", key, string(v))
		case *lua.LTable:
			if k, _ := v.Next(lua.LNil); key == "hooks" && k == lua.LNil {
				o.Fail(key, "is empty: list the hooks the plugin must serve, or leave hooks out to use every hook it implements")
			}
		}
	}
	o.Strings("args", &p.Args)
	ld.enum(o, "on_error", &p.OnError, OnErrorTempfail, OnErrorContinue, OnErrorReject)
	ld.duration(o, "timeout", &p.Timeout)
	if o.Int("max_in_flight", &p.MaxInFlight) && p.MaxInFlight < 1 {
		o.Fail("max_in_flight", "must be at least 1")
	}
	if o.Int("instances", &p.Instances) && (p.Instances < 1 || p.Instances > 64) {
		o.Fail("instances", "must be from 1 to 64")
	}
	pluginTable := func(key string) map[string]any {
		v := o.Get(key)
		if v == lua.LNil {
			return nil
		}
		t, ok := v.(*lua.LTable)
		if !ok {
			o.Fail(key, "want a table of key = value, got %s", sandbox.Describe(v))
		}
		g, err := sandbox.ToGo(t)
		if err != nil {
			o.Fail(key, "%v", err)
		}
		switch m := g.(type) {
		case map[string]any:
			return m
		case []any:
			if len(m) > 0 {
				o.Fail(key, "want a table of key = value, got a list")
			}
		}
		return map[string]any{}
	}
	if env := pluginTable("env"); env != nil {
		for _, k := range slices.Sorted(maps.Keys(env)) {
			v, ok := env[k].(string)
			if !ok {
				what := "a table"
				switch env[k].(type) {
				case int64, float64:
					what = "a number"
				case bool:
					what = "a boolean"
				}
				o.Fail("env", "%q: the value must be a string, got %s (%v): write %s = \"%v\"", k, what, env[k], k, env[k])
			}
			if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
				o.Fail("env", "%q: want NAME = \"string value\" (no '=' or NUL in names or values)", k)
			}
			p.Env = append(p.Env, k+"="+v)
		}
	}
	p.Config = pluginTable("config")
	if path, ok := nonFinite(p.Config, "config"); !ok {
		o.Fail("config", "%s is NaN or infinite, which JSON cannot carry to the plugin: give a finite number", path)
	}
	if o.Strings("hooks", &p.Hooks) {
		for _, h := range p.Hooks {
			if !slices.Contains(pluginHooks, h) {
				o.Fail("hooks", "%q is not a plugin hook (want one of %s)", h, strings.Join(pluginHooks, ", "))
			}
		}
	}
	return ld.pushSpec(&StageSpec{Kind: StagePlugin, Plugin: p})
}

// nonFinite walks a plugin's config (as sandbox.ToGo made it) and returns
// the path of the first NaN or infinite number (which encoding/json
// refuses) and false; "" and true when there is none.
func nonFinite(v any, path string) (string, bool) {
	switch x := v.(type) {
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return path, false
		}
	case map[string]any:
		for _, k := range slices.Sorted(maps.Keys(x)) {
			if p, ok := nonFinite(x[k], path+"."+k); !ok {
				return p, false
			}
		}
	case []any:
		for i, e := range x {
			if p, ok := nonFinite(e, fmt.Sprintf("%s[%d]", path, i+1)); !ok {
				return p, false
			}
		}
	}
	return "", true
}

// validTopic reports whether t is a legal Kafka topic name (Kafka's
// Topic.validate: 1 to 249 characters of [a-zA-Z0-9._-], not "." or "..").
func validTopic(t string) bool {
	return t != "" && len(t) <= 249 && t != "." && t != ".." && pipeline.NameChars(t)
}

// kafkaMore parses the Kafka sink's keys past brokers and topics.
func (ld *loader) kafkaMore(k *sandbox.Opts, kc *Kafka) {
	if v := k.Get("routes"); v != lua.LNil {
		m, err := sandbox.ToGo(v)
		routes, ok := m.(map[string]any)
		if err != nil || !ok {
			k.Fail("routes", "want a table of event type = \"topic\"")
		}
		kc.Routes = map[string]string{}
		for typ, t := range routes {
			ts, ok := t.(string)
			if !ok || !validTopic(ts) {
				k.Fail("routes", "%s: want a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -, not \".\" or \"..\")", typ)
			}
			if !knownEventType(typ) {
				k.Fail("routes", "unknown event type %q (want one of %s)", typ, strings.Join(eventTypes, ", "))
			}
			kc.Routes[typ] = ts
		}
	}
	if k.Strings("types", &kc.Types) {
		for _, typ := range kc.Types {
			if !knownEventType(typ) {
				k.Fail("types", "unknown event type %q (want one of %s)", typ, strings.Join(eventTypes, ", "))
			}
		}
	}
	if k.String("acks", &kc.Acks) && kc.Acks != "all" && kc.Acks != "leader" {
		k.Fail("acks", "want \"all\" or \"leader\", got %q", kc.Acks)
	}
	kc.TLS = ld.clientTLS(k, "tls")
	if a := k.Sub("sasl", "mechanism", "username", "password"); a != nil {
		kc.SASL = &KafkaSASL{}
		a.String("mechanism", &kc.SASL.Mechanism)
		switch kc.SASL.Mechanism {
		case "plain", "scram-sha-256", "scram-sha-512":
		default:
			a.Fail("mechanism", "want \"plain\", \"scram-sha-256\" or \"scram-sha-512\", got %q", kc.SASL.Mechanism)
		}
		if !a.String("username", &kc.SASL.Username) || kc.SASL.Username == "" {
			a.Fail("username", "is required")
		}
		a.String("password", &kc.SASL.Password)
	}
	if k.String("dead_letter", &kc.DeadLetter) && kc.DeadLetter == "" {
		k.Fail("dead_letter", "must not be empty")
	}
	ld.duration(k, "missing_topic_wait", &kc.MissingTopicWait)
	ld.duration(k, "batch_timeout", &kc.BatchTimeout)
	ld.size(k, "max_message_bytes", &kc.MaxMessageBytes)
	if k.Int64("max_backlog", &kc.MaxBacklog) && kc.MaxBacklog < 0 {
		k.Fail("max_backlog", "must not be negative (0: no budget)")
	}
	if k.String("on_backlog_full", &kc.OnBacklogFull) && kc.OnBacklogFull != "accept" && kc.OnBacklogFull != "tempfail" {
		k.Fail("on_backlog_full", "want \"accept\" or \"tempfail\", got %q", kc.OnBacklogFull)
	}
}

// eventTypes are the event types kafka.types and kafka.routes accept: the
// pipeline's, the suppression list's and shaping's.
var eventTypes = pipeline.EventTypes

func knownEventType(t string) bool { return slices.Contains(eventTypes, t) }

// clientTLS reads a ClientTLS table under key (nil when absent).
func (ld *loader) clientTLS(o *sandbox.Opts, key string) *ClientTLS {
	t := o.Sub(key, "ca", "cert", "key", "server_name", "insecure_skip_verify")
	if t == nil {
		return nil
	}
	c := &ClientTLS{}
	t.String("ca", &c.CA)
	t.String("cert", &c.Cert)
	t.String("key", &c.Key)
	t.String("server_name", &c.ServerName)
	t.Bool("insecure_skip_verify", &c.InsecureSkipVerify)
	if (c.Cert == "") != (c.Key == "") {
		t.Fail("cert", "set both cert and key, or neither")
	}
	c.CA, c.Cert, c.Key = ld.resolve(c.CA), ld.resolve(c.Cert), ld.resolve(c.Key)
	return c
}
