// Package config holds Sluice's configuration as Go values, their defaults
// and validation. The configuration file is a Lua program (pipeline.lua);
// Load evaluates it in a sandboxed Lua state where the `sluice` module's
// configuration functions (sluice.spool, sluice.listen_smtp, sluice.stage,
// ...) record into a Config. Errors name the file and line, e.g.
//
//	pipeline.lua:12: sluice.listen_smtp: unknown key "adress"
//
// The sandbox (safe libraries, require, print, verdict/route/log helpers)
// lives in internal/luahost/sandbox, a leaf package that this package and
// internal/luahost both import; luahost also imports config (for Config and
// InstallRuntime), so the sandbox cannot live in either without a cycle.
//
// Every function and key is documented, with examples, in docs/config.md.
package config

import (
	"net/netip"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

// Config is the whole configuration of one node.
type Config struct {
	File         string // path of the config file, as given
	Node         string // node name copied into events; default: hostname
	Hostname     string // name used in EHLO, Received, DSNs; default: OS hostname
	LocalDomains []string
	Spool        Spool
	SMTP         []SMTPListener
	HTTP         []HTTPListener
	Admin        *AdminListener // nil: no admin listener
	Delivery     Delivery
	Events       Events
	Bounces      Bounces
	Suppression  Suppression  // sluice.suppression (suppression.go)
	Domains      Domains      // sluice.domains (domains.go)
	DNSServer    *DNSServer   // sluice.dns_server (dnsserver.go); nil: not configured
	DKIMRotation DKIMRotation // sluice.dkim_rotation (dnsserver.go)
	Auth         Auth         // sluice.auth (auth.go)
	Tokens       Tokens       // sluice.tokens (tokens.go)
	Redis        *Redis       // sluice.redis (redis.go); nil: not configured
	Shaping      *Shaping     // sluice.shaping (shaping.go); nil: not configured
	Egress       *Egress      // sluice.egress (shaping.go); nil: not configured
	Logging      Logging      // sluice.logging (logging.go)
	Tracking     *Tracking    // sluice.tracking (tracking.go); nil: not configured
	Sandbox      *Sandbox     // sluice.sandbox (sandbox.go); nil: not configured
	// TLSReporting is sluice.tls_reporting (tlsreporting.go); nil: not
	// configured.
	TLSReporting *TLSReporting
	Lua          Lua
	Stages       []StageSpec
	StageTimeout time.Duration // bound on each stage call; default 30s

	// Source is the configuration program as Load evaluated it. The Lua
	// host replays it in each pooled Lua state to build inline stages
	// (sluice.stage("name", { on_rcpt = function ... end })), so that the
	// file changing on disk after Load cannot change a running pipeline.
	// nil for a Config built in Go; the host then reads File.
	Source []byte

	// secrets records what sluice.env and sluice.read_file returned during
	// Load, for the replay (Config.InstallRuntime). nil when neither was
	// called. Unexported and behind a pointer so that printing a Config
	// shows an address, not the secrets.
	secrets *snapshot
}

// Spool: sluice.spool { path = "./var/spool", memtable_mb = 64 }.
type Spool struct {
	Path       string // default "./var/spool"
	MemtableMB int    // Pebble memtable size; default 64
	// WALRecycling reuses obsolete WAL files (spool.Options.WALRecycling); default false.
	WALRecycling bool
	// WALZeroAhead writes zeros ahead of the live WAL's end so that its
	// syncs need no filesystem journal commit
	// (spool.Options.NoWALZeroAhead); default true.
	WALZeroAhead bool
	// MinFree is the free space kept in reserve on the spool's filesystem:
	// below it new mail is refused with 452 4.3.1 (HTTP 507). Default
	// 100 MB; 0 disables the check.
	MinFree int64
}

// TLS is a certificate and key pair in PEM files.
type TLS struct {
	Cert string
	Key  string
}

// SMTPListener: sluice.listen_smtp { ... }.
type SMTPListener struct {
	Name           string         // default: Addr
	Addr           string         // required, host:port
	Hostname       string         // default: Config.Hostname
	TLS            *TLS           // enables STARTTLS (or implicit TLS)
	ImplicitTLS    bool           // 465-style: TLS from the first byte; needs TLS
	Auth           string         // "none" (default), "optional", "required"
	AuthInsecure   bool           // offer AUTH before TLS to non-loopback clients too
	RelayNetworks  []netip.Prefix // clients that may relay; default none
	MaxMessageSize int64          // bytes; default 25 MiB
	MaxRecipients  int            // per transaction; default 100
	MaxLineLength  int            // bytes; default 1000 (RFC 5321 limit incl. CRLF)
	MaxConnections int            // concurrent; beyond it 421; default 1000
	ReadTimeout    time.Duration  // per command; default 5m
	WriteTimeout   time.Duration  // default 5m
	DataTimeout    time.Duration  // whole DATA phase; default 10m
	BareLineEnding string         // "reject" (default) or "normalize"
	MaxHops        int            // Received fields a message may carry; default 100 (RFC 5321 section 6.3)

	// Per-client-address limits (like Postfix's anvil); relay_networks
	// clients are exempt, loopback is not unless listed there. MaxConnectionsPerIP bounds
	// concurrent connections (default 20); MaxConnectionRatePerIP
	// connections per ConnectionRateWindow (default 60 per minute).
	// Beyond either: 421 4.7.0, then closed.
	MaxConnectionsPerIP    int
	MaxConnectionRatePerIP int
	ConnectionRateWindow   time.Duration
	// MaxSessionTime bounds a whole SMTP session (default 30m); then the
	// session ends with 421 4.4.2 at its next command.
	MaxSessionTime time.Duration
	// MaxInflightBytes bounds the message bytes held in memory by all this
	// listener's transactions at once (default 256 MiB); a DATA/BDAT
	// past it gets 452 4.3.1.
	MaxInflightBytes int64
	// SpillThreshold is how much of a message is received in memory
	// (default 1 MiB); the rest goes to a temporary file next to the
	// spool while it arrives, and the message is read back in one piece
	// only after its end of data, to be checked and committed.
	SpillThreshold int64

	// Sandbox names a tenant: every message accepted on this listener is
	// captured into that tenant's sandbox inbox (docs/sandbox.md).
	// Needs sluice.sandbox.
	Sandbox string

	// DisableRequireTLS stops the listener offering REQUIRETLS (RFC
	// 8689) on TLS sessions; config key requiretls = false. By default
	// it is offered (only after STARTTLS or on implicit TLS) and a
	// message sent with it is delivered only over validated TLS.
	DisableRequireTLS bool
}

// HTTPListener: sluice.listen_http { addr = "127.0.0.1:8025", tls = {...} }.
type HTTPListener struct {
	Addr           string
	TLS            *TLS
	MaxRequestSize int64         // bytes; default 30 MiB
	RequestTimeout time.Duration // reading a whole request, header and body; default 1m
	// MaxInflightBytes bounds the request bodies held in memory by all
	// this listener's requests at once (default 256 MiB); past it a
	// request gets 503 with Retry-After before its body is read.
	MaxInflightBytes int64
	// AccessLog logs one line per HTTP request (method, path, status,
	// bytes, duration, client address); default off.
	AccessLog bool
}

// AdminListener: sluice.listen_admin { addr = "127.0.0.1:9101", allow = {...} }.
// It serves /metrics (Prometheus text format), /healthz and /readyz to
// clients whose address is in Allow; others get 403.
type AdminListener struct {
	Addr  string
	Allow []netip.Prefix // default: loopback (127.0.0.0/8, ::1/128)
}

// DefaultAdminAllow is the admin listener's allow-list when none is given:
// loopback only.
func DefaultAdminAllow() []netip.Prefix {
	return []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
}

// Delivery: sluice.delivery { ... }.
type Delivery struct {
	Hostname           string        // EHLO name; default Config.Hostname
	Resolver           string        // DNS server host:port; default: first nameserver of /etc/resolv.conf
	Port               int           // SMTP port for MX deliveries; default 25 (tests use another)
	TLS                string        // default TLS policy for MX routes: opportunistic
	TLSSkipVerify      bool          // do not verify certificates (opportunistic TLS never verifies; MTA-STS always does)
	NoMTASTS           bool          // mta_sts = false: ignore recipient domains' MTA-STS policies (RFC 8461); default: apply them
	DANE               bool          // dane = true: apply MX hosts' DNSSEC-authenticated TLSA records (RFC 7672), trusting Resolver's AD bit (a validating resolver on a trusted path only); default false
	MaxConnections     int           // all destinations; default 200
	MaxPerDestination  int           // per queue; default 10
	MaxMessagesPerConn int           // messages over one connection; default 100
	ConnectTimeout     time.Duration // default 30s
	CommandTimeout     time.Duration // default 5m
	DataTimeout        time.Duration // default 10m
	IdleTimeout        time.Duration // keep a reused connection idle; default 5s
	RetryInitial       time.Duration // first retry delay; default 1m
	RetryMax           time.Duration // cap on retry delay; default 1h
	RetryFactor        float64       // backoff multiplier; default 2
	RetryJitter        float64       // +/- fraction; default 0.2
	QueueLifetime      time.Duration // then expire and bounce; default 120h (5 days)
	// DelayWarning: a recipient still undelivered this long after arrival
	// gets a "delayed" DSN (RFC 3461 NOTIFY=DELAY, and by default), then
	// at most one more per DelayWarning while it waits; 0 sends none.
	// Default 4h.
	DelayWarning time.Duration
	// OwnNames and OwnAddresses say which MX hosts are this node besides
	// the ones it finds itself (its host names, and its SMTP listeners'
	// addresses when they listen on Port): names (lower-cased, no
	// trailing dot) and addresses or prefixes, say a NAT or load
	// balancer address that leads here. Delivery never uses an MX host
	// that is this node, nor any less preferred (RFC 5321 section 5.1).
	OwnNames     []string
	OwnAddresses []netip.Prefix
}

// Events: sluice.events { file = "./var/events.jsonl", kafka = {...} }.
type Events struct {
	File  string // JSONL file; default "./var/events.jsonl"
	Kafka *Kafka // nil: events go to File only
	// Webhooks are the HTTP endpoints events are POSTed to, each a sink
	// with its own cursor (sluice.events { webhooks = { {...} } }).
	Webhooks []Webhook
}

// Webhook: one endpoint in sluice.events { webhooks = { { name = "billing",
// url = "https://...", secret = sluice.env("WH_SECRET") } } }.
type Webhook struct {
	Name    string   // unique among the webhooks; the sink is "webhook:<name>"
	URL     string   // http:// or https:// URL events are POSTed to
	Secret  string   // Standard Webhooks secret: "whsec_" + base64 of >= 24 bytes
	Types   []string // event types sent; empty: all
	Tenants []string // tenants whose events are sent ("" for none); empty: all
	// Timeout bounds one request; default 10s.
	Timeout time.Duration
	// DeadLetterAfter: a failed event older than this is written to
	// DeadLetter instead of retried; default 24h.
	DeadLetterAfter time.Duration
	// DeadLetter is the dead-letter JSONL file; default
	// "webhook-<name>.dead.jsonl" beside the events file.
	DeadLetter string
	// Concurrency bounds the requests in flight; default 4.
	Concurrency int
}

// Bounces: sluice.bounces { rules = { "/etc/sluice/bounce.toml" },
// default_rules = true }: how deferred, bounced and expired events get
// their bounce_class (internal/bounce).
type Bounces struct {
	Rules        []string // rule files in KumoMTA's format, read in order before the defaults; relative to the config file
	DefaultRules bool     // read Sluice's embedded default rules after Rules; default true
}

// Kafka: sluice.events { kafka = { brokers = {"127.0.0.1:9092"} } }.
type Kafka struct {
	Brokers     []string // host:port, at least one
	Topic       string   // every event; default "sluice.delivery"
	BounceTopic string   // bounced, expired, rejected, suppressed; default "sluice.bounce"
	// Routes sends the events of a type to one more topic each.
	Routes map[string]string
	// Types, when not empty, limits the event types published.
	Types []string
	Acks  string // "all" (default) or "leader"
	TLS   *ClientTLS
	SASL  *KafkaSASL
	// DeadLetter is the JSONL file of events that can never be published;
	// default "kafka-dead-letter.jsonl" beside Events.File.
	DeadLetter string
	// MissingTopicWait: how long a topic may be missing before its
	// events are dead-lettered; default 1m.
	MissingTopicWait time.Duration
	// BatchTimeout: the longest a partial batch waits; default 1ms.
	BatchTimeout time.Duration
	// MaxMessageBytes: the largest record sent; default 1 MiB.
	MaxMessageBytes int64
	// MaxBacklog: the events the sink may lag behind before
	// OnBacklogFull applies; default 1,000,000 (about 500 MB of outbox);
	// 0 is no budget (and no backlog warnings).
	MaxBacklog int64
	// OnBacklogFull: "accept" (default; logged loudly) or "tempfail"
	// (new mail refused with 451 4.3.0 / HTTP 503 while over budget).
	OnBacklogFull string
}

// ClientTLS is the TLS of a connection Sluice opens to a service (Kafka,
// Redis): tls = { ca = ..., cert = ..., key = ..., server_name = ...,
// insecure_skip_verify = false }. Paths are relative to the config file.
type ClientTLS struct {
	CA, Cert, Key, ServerName string
	InsecureSkipVerify        bool
}

// KafkaSASL: kafka = { sasl = { mechanism = "scram-sha-512", username = ..., password = ... } }.
type KafkaSASL struct {
	Mechanism, Username, Password string
}

// Lua: sluice.lua_options { timeout = "100ms", pool_size = 0,
// max_string = "1MiB", max_header = "64KiB" }.
type Lua struct {
	Timeout  time.Duration // per hook call; default 100ms
	PoolSize int           // max idle states kept; default 2*GOMAXPROCS+8
	// MaxString bounds a string a string/table builtin takes as a pattern
	// subject or builds (gsub, rep, format, concat, the .. operator, a
	// print line); default 1 MiB.
	MaxString int64
	// MaxHeader bounds a header field value handed to Lua (msg:header,
	// msg:headers): longer values are cut to this many bytes; default 64 KiB.
	MaxHeader int64
}

// Stage kinds in a StageSpec.
const (
	StageBuiltin = "builtin" // a Go stage from pipeline's registry
	StageLua     = "lua"     // a script file returning a table of hooks
	StageInline  = "inline"  // a table of hook functions in the config itself
	StagePlugin  = "plugin"  // a plugin binary (sluice.plugin { cmd = ... })
)

// Plugin failure policies (PluginSpec.OnError).
const (
	OnErrorTempfail = "tempfail"
	OnErrorContinue = "continue"
	OnErrorReject   = "reject"
)

// PluginSpec: sluice.plugin { cmd = "./bin/x", args = {...}, on_error = "tempfail", timeout = "5s" }.
type PluginSpec struct {
	Cmd         string         // executable; a relative path with a slash resolves against the config file's directory
	Args        []string       // extra arguments
	OnError     string         // OnErrorTempfail (default), OnErrorContinue or OnErrorReject
	Timeout     time.Duration  // per hook call; 0 = the stage timeout only
	Env         []string       // "K=V" added to the relay's environment, sorted by key
	MaxInFlight int            // calls in flight at once; 0 = the plugin package's default (64)
	Instances   int            // plugin processes; 0 = 1
	Config      map[string]any // passed to the plugin at start, as JSON; nil when absent
	Hooks       []string       // hooks the plugin must implement; empty = whatever it implements
}

// StageSpec is one sluice.stage(name, ...) call, in order.
type StageSpec struct {
	Name    string
	Kind    string         // StageBuiltin, StageLua, StageInline
	Builtin string         // builtin kind, e.g. "relay"
	Options map[string]any // builtin options
	Script  string         // lua: script path, resolved relative to the config file
	Hooks   []string       // lua/inline: hook names the table defines
	Plugin  *PluginSpec    // plugin: the command and its failure policy
	Line    int            // line of the sluice.stage call, for errors
}

// Defaults returns a Config with every default filled in and no listeners.
// Defaults live here, in Defaults, DefaultSMTPListener, DefaultHTTPListener
// and DefaultKafka (and DefaultLuaPoolSize); other packages that need a
// default for a zero value should take it from these.
func Defaults() *Config {
	return &Config{
		Spool:        Spool{Path: "./var/spool", MemtableMB: 64, WALZeroAhead: true, MinFree: 100 << 20},
		Events:       Events{File: "./var/events.jsonl"},
		Bounces:      Bounces{DefaultRules: true},
		Suppression:  DefaultSuppression(),
		Domains:      DefaultDomains(),
		DKIMRotation: DefaultDKIMRotation(),
		Auth:         DefaultAuth(),
		Tokens:       DefaultTokens(),
		Lua:          Lua{Timeout: 100 * time.Millisecond, MaxString: 1 << 20, MaxHeader: 64 << 10},
		StageTimeout: 30 * time.Second,
		Delivery: Delivery{
			Port:               25,
			TLS:                pipeline.TLSOpportunistic,
			MaxConnections:     200,
			MaxPerDestination:  10,
			MaxMessagesPerConn: 100,
			ConnectTimeout:     30 * time.Second,
			CommandTimeout:     5 * time.Minute,
			DataTimeout:        10 * time.Minute,
			IdleTimeout:        5 * time.Second,
			RetryInitial:       time.Minute,
			RetryMax:           time.Hour,
			RetryFactor:        2,
			RetryJitter:        0.2,
			QueueLifetime:      120 * time.Hour,
			DelayWarning:       4 * time.Hour,
		},
	}
}

// DefaultSMTPListener returns a listener with every limit at its default.
func DefaultSMTPListener(addr string) SMTPListener {
	return SMTPListener{
		Name:           addr,
		Addr:           addr,
		Auth:           "none",
		MaxMessageSize: 25 << 20,
		MaxRecipients:  100,
		MaxLineLength:  1000,
		MaxConnections: 1000,
		ReadTimeout:    5 * time.Minute,
		WriteTimeout:   5 * time.Minute,
		DataTimeout:    10 * time.Minute,
		BareLineEnding: "reject",
		MaxHops:        pipeline.DefaultMaxHops,

		MaxConnectionsPerIP:    20,
		MaxConnectionRatePerIP: 60,
		ConnectionRateWindow:   time.Minute,
		MaxSessionTime:         30 * time.Minute,
		MaxInflightBytes:       256 << 20,
		SpillThreshold:         1 << 20,
	}
}

// DefaultHTTPListener returns an HTTP listener with every limit at its
// default.
func DefaultHTTPListener(addr string) HTTPListener {
	return HTTPListener{Addr: addr, MaxRequestSize: 30 << 20, RequestTimeout: time.Minute, MaxInflightBytes: 256 << 20}
}

// DefaultKafka returns the Kafka settings' defaults (topics); Brokers is
// empty and required.
func DefaultKafka() *Kafka {
	return &Kafka{Topic: "sluice.delivery", BounceTopic: "sluice.bounce", Acks: "all",
		MissingTopicWait: time.Minute, BatchTimeout: time.Millisecond, MaxMessageBytes: 1 << 20,
		MaxBacklog: 1_000_000, OnBacklogFull: "accept"}
}
