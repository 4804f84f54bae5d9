package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Stage is a named pipeline stage. It implements any subset of the hook
// interfaces below; the Chain finds them by type assertion when compiled.
// A hook returns a Verdict, or an error for a failure of the stage itself
// (a script error, a plugin crash): the Chain maps such errors to a
// temporary failure and never shows their text to the client.
type Stage interface {
	Name() string
}

// ConnectHook runs when a TCP connection is accepted or an HTTP request is
// authenticated.
type ConnectHook interface {
	OnConnect(ctx context.Context, c *Conn) (Verdict, error)
}

// HeloHook runs at EHLO/HELO.
type HeloHook interface {
	OnHelo(ctx context.Context, c *Conn, name string) (Verdict, error)
}

// AuthHook checks credentials. On Accept it returns the Identity.
type AuthHook interface {
	OnAuth(ctx context.Context, c *Conn, cr *Credentials) (Verdict, *Identity, error)
}

// MailHook runs at MAIL FROM; txn.Sender is already set.
type MailHook interface {
	OnMail(ctx context.Context, txn *Txn) (Verdict, error)
}

// RcptHook runs for each recipient before it joins txn.Recipients.
type RcptHook interface {
	OnRcpt(ctx context.Context, txn *Txn, r *Recipient) (Verdict, error)
}

// MessageHook runs once the content is received, before spooling. It may
// edit msg.Header, Meta and Tags.
type MessageHook interface {
	OnMessage(ctx context.Context, msg *Message) (Verdict, error)
}

// RouteHook chooses a recipient's route: Accept with Verdict.Route set.
// Reject/Tempfail fail that recipient only.
type RouteHook interface {
	OnRoute(ctx context.Context, msg *Message, r *Recipient) (Verdict, error)
}

// EventHook observes events after they are durably recorded. It cannot
// block delivery: its verdict is ignored and errors are only logged.
type EventHook interface {
	OnEvent(ctx context.Context, ev *Event) error
}

// SignHook is implemented by stages that seal a message (DKIM signing).
// The chain calls Sign once per message after every on_message stage has
// run and its edits were applied, and after the Authentication-Results
// field was written, so msg.Header and msg.Body are exactly what will be
// spooled (Message.WriteTo); nothing edits the header after it. Sign
// prepends its fields itself (msg.Header.AddRaw, which keeps a folded
// value as is) and must prepend only: the fields below are what it signed.
// Signers run in stage order, each seeing the fields the previous ones
// added. It is not called for a discarded or refused message. An error is
// a stage failure (a temporary failure unless it is an *Error); a stage
// that prefers to send unsigned returns nil. Sign is called concurrently
// for different messages. It is a Go-only hook: Lua and plugin stages
// influence it through scratch values the signer reads.
type SignHook interface {
	Sign(ctx context.Context, msg *Message) error
}

// HookLister is implemented by stages whose type has every hook method but
// that serve only some of them (a Lua table defines the hooks it wants, a
// plugin declares its hooks at handshake). Compile registers only the
// hooks listed, by their Lua names ("on_rcpt", "on_route", ...), so an
// unused hook costs nothing per message.
type HookLister interface {
	Hooks() []string
}

// Bounded is implemented by stages that put their own deadline on every
// hook call (a Lua stage's lua_options.timeout, a plugin's timeout).
// When CallTimeout is positive and no longer than the chain's
// StageTimeout, the chain does not wrap their calls in a second timer.
type Bounded interface {
	CallTimeout() time.Duration
}

// Closer is implemented by stages that hold resources (Lua pools, plugin
// processes). The owner calls Close in reverse order of construction,
// after the last transaction using the stage has ended (on shutdown, or
// after a reload replaced the pipeline).
type Closer interface {
	Close() error
}

// Env is what the host hands a stage at provision time: the shared parts
// of the node a stage may use instead of building its own. Fields are
// never nil when Provision is called, except Redis. More shared clients
// (the metrics registry) join here as they are introduced.
type Env struct {
	Logger   *slog.Logger // already carries the stage's name
	Resolver Resolver     // the node's DNS resolver (caching, TTL-aware)
	Hostname string       // this node's host name (EHLO, Received, authserv-id)
	// ConfigDir is the directory of the configuration file: relative
	// paths in a stage's options (key files) are relative to it. "" means
	// the working directory.
	ConfigDir string
	Node      string // this node's name in events
	// Metrics is the node's metrics registry (internal/metrics, served by
	// sluice.listen_admin); nil when the node serves none (sluice check):
	// register nothing then. Stages are built again on every reload, so
	// register a collector once per registry and reuse it
	// (metrics.RegisterOnce); names start with sluice_, labels are
	// bounded.
	Metrics prometheus.Registerer
	// Redis is the node's shared Redis (sluice.redis); nil when the
	// configuration declares none, and a stage then keeps its state on
	// this node (or refuses to validate if it cannot).
	Redis *Redis
	// RateLimits are the node's rate-limit stores (memory, and Redis
	// when sluice.redis is configured), shared across stages and
	// reloads. Never nil.
	RateLimits *RateLimits
}

// Redis is the node's one Redis connection pool (sluice.redis). Client
// is safe for concurrent use; stages must not Close it (the node does, on
// shutdown, after the last transaction). Every key a stage writes starts
// with Prefix (default "sluice:") followed by the stage's own namespace,
// e.g. Prefix+"rl:"+key.
type Redis struct {
	Client redis.UniversalClient
	Prefix string
	// Timeout is sluice.redis's per-command timeout: a command that takes
	// longer counts as Redis being unreachable.
	Timeout time.Duration
	// RateLease is sluice.redis's ratelimit_lease: the most events the
	// Redis rate-limit store leases for a key in one round trip, to spend
	// on this node without one (docs/ratelimit.md). 0 means the default
	// (32); 1 turns leasing off.
	RateLease int
}

// Resolver is the DNS a stage may use: TXT (SPF, DKIM, DMARC), MX and
// addresses. A name that does not exist or has no records of the type is
// a result ("no record"), reported as ErrDNSNotFound; any other error is
// temporary. TTLs are the records' remaining TTL.
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, time.Duration, error)
}

// HostResolver is the rest of the node's DNS, for stages that need more
// than TXT records (SPF's a, mx and ptr mechanisms, RFC 7208 section 5).
// The node's Env.Resolver implements it; a stage that needs it asserts it
// in Provision and fails to load without it. Outcomes are Resolver's: a
// name without records of the type is ErrDNSNotFound, any other error is
// temporary. Names come back lower-case without the trailing dot.
type HostResolver interface {
	Resolver
	// LookupMX returns the exchanger host names of domain, most preferred
	// first.
	LookupMX(ctx context.Context, domain string) ([]string, time.Duration, error)
	// LookupIP returns host's IPv4 and IPv6 addresses.
	LookupIP(ctx context.Context, host string) ([]netip.Addr, time.Duration, error)
	// LookupPTR returns the names of ip's PTR records.
	LookupPTR(ctx context.Context, ip netip.Addr) ([]string, time.Duration, error)
}

// ErrDNSNotFound reports that a name has no records of the type asked
// (NXDOMAIN or no data): for SPF and DMARC, "no record" is a result.
var ErrDNSNotFound = errors.New("dns: no such record")

// Provisioner is implemented by stages that need the node's shared parts.
// The host calls Provision once, after construction and before Validate;
// it must not start goroutines that outlive a failed Validate.
type Provisioner interface {
	Provision(env *Env) error
}

// Validator is implemented by stages that check their configuration once
// provisioned (keys readable, a referenced file present). `sluice check`,
// `serve` and reload all call it; an error stops the pipeline from
// loading, and the host then closes every stage it built.
type Validator interface {
	Validate() error
}
