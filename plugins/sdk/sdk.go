// Package sdk is the Go SDK for Sluice stage plugins: a program that Sluice
// starts and supervises, and that runs as one stage of its pipeline in its
// own process (a crash or a hang of the plugin cannot take the relay down).
//
// An author writes a type with a Name method and the hook methods it needs,
// with the same signatures as package pipeline's hook interfaces
// (pipeline.RcptHook's OnRcpt, pipeline.MessageHook's OnMessage, ...), and
// calls Serve from main. The SDK finds the hooks by type assertion, tells
// Sluice about them at start (Sluice calls no other hook), and hides the
// handshake, gRPC and the conversions:
//
//	type scorer struct{ threshold float64 }
//
//	func (s *scorer) Name() string { return "scorer" }
//
//	func (s *scorer) OnMessage(ctx context.Context, msg *pipeline.Message) (pipeline.Verdict, error) {
//		var v pipeline.Verdict
//		v.Edits.AddHeader("X-Spam-Score", "1.0")
//		return v, nil
//	}
//
//	func main() { sdk.Serve(&scorer{}) }
//
// Optional methods: Configure (Configurer) receives the stage's
// `config = {...}` table as JSON before any hook runs; Body (BodyNeeder)
// says what on_message and on_route need of the message (default Full;
// asked after Configure); UnparsedHeader (HeaderReader) leaves the header
// unparsed for hooks that read fields by name with msg.HeaderValue, the
// cheapest way to inspect a header; Version (Versioner) is logged by Sluice.
//
// Concurrency: hooks are called concurrently, from many goroutines, up to the
// stage's max_in_flight; the stage must be safe for concurrent use. Each call
// carries the stage's per-call deadline in ctx.
//
// Transport: the SDK advertises and serves the protocol's Calls stream
// (protocol 1.1: Sluice multiplexes the hook calls over one long-lived
// gRPC stream per process, cheaper per call than a unary RPC each) and the
// unary hook RPCs, which Sluice uses for large messages and when the stream
// is down. Serve(stage, WithoutStreaming()) serves the unary RPCs only.
// It asks for the header as one block (protocol 1.2), parsed once into
// msg.Header, rather than one protocol message per field; a stage that
// reads a few fields by name leaves it unparsed (HeaderReader) and reads
// them with msg.HeaderValue, without an allocation per field. When Sluice
// reads them (protocol 1.3), answers that complete together go back in one
// stream message.
//
// REQUIRETLS (RFC 8689, protocol 1.4): a hook sees whether the message
// carries it in txn.Params.RequireTLS (msg.Txn.Params.RequireTLS at
// on_message and on_route) and sets or clears it with
// Verdict.Edits.SetRequireTLS, in on_mail, on_rcpt and on_message, as a
// Lua stage does with txn:set_require_tls. Sluice then delivers the
// message only over validated TLS to a next hop that offers REQUIRETLS,
// or bounces it (docs/delivery.md).
//
// Failures: a hook that returns an error fails that call, and Sluice applies
// the stage's on_error policy (tempfail, continue or reject); an error that
// is a *pipeline.Error (pipeline.Errorf) is instead the reply the stage
// chose, as for an in-process stage. A panic is not
// recovered: it ends the plugin process, Sluice applies on_error to the calls
// in flight and restarts the plugin with backoff.
//
// Logging: write to stderr (log/slog's default logger does); Sluice copies
// each line into its own structured log, tagged with the stage name. Do not
// write to stdout before Serve: stdout carries the handshake.
//
// Messages of up to MaxMessageSize bytes cross the process boundary.
package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluice-mta/sluice/internal/plugin/conv"
	"github.com/sluice-mta/sluice/pipeline"
	stagev1 "github.com/sluice-mta/sluice/plugins/proto/stage/v1"
)

// Protocol versions. The major version is in the handshake: a plugin built
// for another major version is refused at start. The minor version is
// reported by Describe and logged.
const (
	ProtocolMajor = 1
	ProtocolMinor = 4
)

// PluginName is the name of the one plugin a stage plugin process serves
// (the go-plugin plugin set key).
const PluginName = "stage"

// MaxMessageSize bounds one gRPC message in both directions, on both sides:
// 128 MiB, room for the largest message Sluice accepts plus its envelope.
// (gRPC's own default, 4 MiB, would fail any larger message.)
const MaxMessageSize = 128 << 20

// Flow-control windows of the connection between Sluice and a plugin, in
// bytes: 1 MiB per stream, 4 MiB per connection. Fixed windows turn off
// gRPC's bandwidth estimator, which otherwise follows nearly every
// message with a PING and a window update (and the peer with a PING ack):
// two frames and a goroutine wake-up more per call on each side, for a
// connection that never leaves the machine. Both sides set them for the
// data they receive (the SDK in Serve, Sluice when it dials).
const (
	StreamWindow = 1 << 20
	ConnWindow   = 4 << 20
)

// DefaultGCPercent is the GOGC that Serve sets when the environment does
// not set GOGC: a plugin's live heap is small (a few MB), so the default
// of 100 collects every few hundred calls and the collector is about a
// tenth of a small plugin's CPU; 400 trades a few MB of memory for most
// of that. The heap may grow to five times what is live (twice with the
// default): a full-body plugin that holds several large messages at once
// should set GOGC=100 or a GOMEMLIMIT in the stage's env, which wins.
const DefaultGCPercent = 400

// DefaultMaxProcs is the GOMAXPROCS that Serve sets when the environment
// does not set GOMAXPROCS and the stage was not served WithMaxProcs: one
// processor. A plugin's hooks are mostly short (header checks, lookups
// over the network), and with more processors than runnable goroutines
// the Go scheduler spends about a fifth of such a plugin's CPU waking
// threads and looking for work between calls (futex, epoll). With one it
// hands work from goroutine to goroutine on one thread: about 15% less
// CPU per call, and a lower latency. It caps the process at one core: a
// plugin whose hooks are CPU-heavy (parsing whole bodies, scoring) serves
// with WithMaxProcs(0) (Go's default, one per core), or the operator sets
// GOMAXPROCS in the stage's env, or runs more instances.
const DefaultMaxProcs = 1

// Handshake is the go-plugin handshake: the protocol major version and the
// magic cookie SLUICE_PLUGIN=stage, which Sluice sets in the plugin's
// environment. A plugin started by hand (without the cookie) says so and
// exits.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolMajor,
	MagicCookieKey:   "SLUICE_PLUGIN",
	MagicCookieValue: "stage",
}

// Body says what on_message and on_route receive of the message.
type Body int

const (
	Envelope Body = iota // the transaction only
	Headers              // the header fields, no body
	Full                 // header and body
)

// BodyNeeder is implemented by stages that need less than the full message.
type BodyNeeder interface {
	Body() Body
}

// HeaderReader is implemented by stages that read the header of
// on_message and on_route through msg.HeaderValue and msg.HeaderValues
// (pipeline.Message) rather than msg.Header. When UnparsedHeader returns
// true (asked at every call, so Configure may decide), the SDK leaves the
// header block as it came (pipeline.NewMessageUnparsed): msg.Header is
// empty, and those lookups read the block without parsing it and, for a
// field on one line, without allocating. Parsing a 13-field header into
// msg.Header costs about 60 allocations, a fifth of a small plugin's CPU
// per call, whether the hook reads two fields or all. A hook that wants
// the full textproto.Header API calls msg.ParseHeader first (once per
// message; it is then parsed as without this). Edits
// (Verdict.Edits.AddHeader, ...) need no parsed header. A header sent as
// fields (an older Sluice, WithHeaderFields) is parsed as usual.
type HeaderReader interface {
	UnparsedHeader() bool
}

// Configurer is implemented by stages that take configuration. Configure
// is called once, before any hook, with the stage name given to
// sluice.stage and the config table as a JSON object ({} when absent). An
// error stops the stage from loading; its text is shown to the operator.
type Configurer interface {
	Configure(stageName string, config json.RawMessage) error
}

// Versioner is implemented by stages that report a version.
type Versioner interface {
	Version() string
}

// GRPCPlugin is the go-plugin glue of a stage plugin, on both sides: Impl
// is the server (plugin side); GRPCClient returns a stagev1.StageClient
// (host side).
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl stagev1.StageServer
}

// GRPCServer registers the stage service.
func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	stagev1.RegisterStageServer(s, p.Impl)
	return nil
}

// GRPCClient returns a stagev1.StageClient.
func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return stagev1.NewStageClient(c), nil
}

// Option changes how Serve and NewServer serve a stage.
type Option func(*server)

// WithoutStreaming makes the plugin serve each hook call as its own unary
// RPC only: Describe does not advertise the Calls stream (protocol 1.1),
// and Sluice does not open it. Streaming, the default, costs less per
// call (no new HTTP/2 stream and headers per call); this option exists for
// comparisons and for plugins that must behave as protocol 1.0 ones.
func WithoutStreaming() Option { return func(s *server) { s.noStream = true } }

// WithHeaderFields makes the plugin take the header as one entry per field
// (as protocol 1.0 and 1.1 plugins do) instead of one block (protocol
// 1.2, the default: cheaper to encode, send and decode). The hooks see
// the same message either way; this option exists for comparisons and
// tests.
func WithHeaderFields() Option { return func(s *server) { s.fields = true } }

// WithMaxProcs sets the plugin process's GOMAXPROCS to n instead of
// DefaultMaxProcs; 0 leaves Go's default (one per core, or the
// container's CPU limit). For plugins whose hooks are CPU-heavy. A
// GOMAXPROCS in the environment (the stage's env) wins over it.
func WithMaxProcs(n int) Option { return func(s *server) { s.maxProcs = n } }

// WithInlineCalls makes the Calls stream (protocol 1.1) run each hook call
// on the goroutine that receives the requests, one after the other, instead
// of handing it to one of the stream's workers: a goroutine switch, a
// closure and the call's entry in the cancel table less per call (in
// BenchmarkPluginOnMessage about 0.5 µs of the plugin's CPU per call with 8
// in flight, 3 µs one at a time; end to end about 1 µs per message:
// BENCHMARKS.md, "Issue 16: sysmon kept awake by default, inline calls").
// Only for hooks that return in microseconds and never wait
// (no network, no disk, no lock held for long): while a hook runs, the
// requests behind it wait, and Sluice's cancel request for it is read only
// after it returned (its deadline still ends its context); a hook that
// waits until the stage's timeout makes the calls queued behind it miss
// their deadlines too (a queued call whose deadline has passed when its
// turn comes is answered DEADLINE_EXCEEDED without running its hook), and
// Sluice restarts a plugin after three calls in a row past their deadline
// (docs/plugins.md, "Restarts"). With the SDK's
// default of one processor (DefaultMaxProcs) such hooks run one at a time
// anyway. Unary calls (WithoutStreaming, or messages too large for the
// stream) are not affected.
func WithInlineCalls() Option { return func(s *server) { s.inline = true } }

// Serve serves stage until Sluice stops the plugin, then returns. It exits
// the process with status 1 when not started by Sluice. Unless the
// environment sets them, it sets GOGC to DefaultGCPercent and GOMAXPROCS
// to DefaultMaxProcs (see WithMaxProcs). It takes the schedtrace=2147483647
// that Sluice adds to a plugin's GODEBUG out of the environment once the
// runtime has read it: processes the plugin starts do not inherit it.
func Serve(stage pipeline.Stage, opts ...Option) {
	forgetSluiceSchedtrace()
	if os.Getenv("GOGC") == "" && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetGCPercent(DefaultGCPercent)
	}
	srv := newServer(stage, opts...)
	if n := srv.maxProcs; n > 0 && os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(n)
	}
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins:         plugin.PluginSet{PluginName: &GRPCPlugin{Impl: srv}},
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			// Stream workers reuse their goroutines (and their grown
			// stacks) across calls instead of a new goroutine per call:
			// about a tenth of a small call's CPU in the plugin.
			opts = append(opts, serverOptions()...)
			return grpc.NewServer(append(opts, grpc.NumStreamWorkers(uint32(max(4, runtime.GOMAXPROCS(0)))))...)
		},
		Logger: hclog.New(&hclog.LoggerOptions{Name: "sdk", Output: os.Stderr, Level: hclog.Warn}),
	})
}

// NewServer returns the gRPC service for stage, for tests and for hosting
// the service in a server of one's own; most plugins call Serve instead.
func NewServer(stage pipeline.Stage, opts ...Option) stagev1.StageServer {
	return newServer(stage, opts...)
}

func newServer(stage pipeline.Stage, opts ...Option) *server {
	s := &server{st: stage, maxProcs: DefaultMaxProcs}
	for _, o := range opts {
		o(s)
	}
	return s
}

type server struct {
	stagev1.UnimplementedStageServer
	st       pipeline.Stage
	noStream bool
	inline   bool // run stream calls on the receiving goroutine
	fields   bool // header as fields, not as a block
	maxProcs int  // GOMAXPROCS for Serve to set; 0: Go's default
	// batch: Sluice reads CallResponse.more (ConfigureRequest.batch_answers,
	// protocol 1.3), so the Calls stream may send answers together.
	batch atomic.Bool
}

// body asks the stage for its body need (after Configure, so the
// configuration may decide).
func (s *server) body() stagev1.BodyNeed {
	if b, ok := s.st.(BodyNeeder); ok {
		switch b.Body() {
		case Envelope:
			return stagev1.BodyNeed_BODY_NEED_ENVELOPE
		case Headers:
			return stagev1.BodyNeed_BODY_NEED_HEADERS
		}
	}
	return stagev1.BodyNeed_BODY_NEED_FULL
}

func (s *server) Configure(_ context.Context, r *stagev1.ConfigureRequest) (*stagev1.ConfigureResponse, error) {
	s.batch.Store(r.BatchAnswers)
	c, ok := s.st.(Configurer)
	if !ok {
		return &stagev1.ConfigureResponse{}, nil
	}
	cfg := json.RawMessage(slices.Clip(r.ConfigJson)) // may point into the decoder's buffer (Codec)
	if len(cfg) == 0 {
		cfg = json.RawMessage("{}")
	}
	if err := c.Configure(r.StageName, cfg); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &stagev1.ConfigureResponse{}, nil
}

func (s *server) Describe(context.Context, *stagev1.DescribeRequest) (*stagev1.DescribeResponse, error) {
	d := &stagev1.DescribeResponse{Name: s.st.Name(), Body: s.body(), ProtocolMinor: ProtocolMinor, Streaming: !s.noStream,
		HeaderBlock: !s.fields}
	if v, ok := s.st.(Versioner); ok {
		d.Version = v.Version()
	}
	add := func(ok bool, h stagev1.Hook) {
		if ok {
			d.Hooks = append(d.Hooks, h)
		}
	}
	_, ok := s.st.(pipeline.ConnectHook)
	add(ok, stagev1.Hook_HOOK_ON_CONNECT)
	_, ok = s.st.(pipeline.HeloHook)
	add(ok, stagev1.Hook_HOOK_ON_HELO)
	_, ok = s.st.(pipeline.MailHook)
	add(ok, stagev1.Hook_HOOK_ON_MAIL)
	_, ok = s.st.(pipeline.RcptHook)
	add(ok, stagev1.Hook_HOOK_ON_RCPT)
	_, ok = s.st.(pipeline.MessageHook)
	add(ok, stagev1.Hook_HOOK_ON_MESSAGE)
	_, ok = s.st.(pipeline.RouteHook)
	add(ok, stagev1.Hook_HOOK_ON_ROUTE)
	_, ok = s.st.(pipeline.EventHook)
	add(ok, stagev1.Hook_HOOK_ON_EVENT)
	return d, nil
}

func (s *server) Health(context.Context, *stagev1.HealthRequest) (*stagev1.HealthResponse, error) {
	return &stagev1.HealthResponse{}, nil
}

func notImplemented(hook string) error {
	return status.Errorf(codes.Unimplemented, "this plugin does not implement %s", hook)
}

// answer converts a hook's result to the reply. A *pipeline.Error
// returned as the error is the reply the stage chose, as it is for a stage
// in the relay's process: it becomes a reject (5xx) or tempfail (4xx)
// verdict, not a failure.
func answer(v pipeline.Verdict, err error) (*stagev1.Verdict, error) {
	if err != nil {
		var pe *pipeline.Error
		if errors.As(err, &pe) && pe.Code >= 400 && pe.Code <= 599 {
			a := pipeline.Reject
			if pe.Code < 500 {
				a = pipeline.Tempfail
			}
			return conv.Verdict(pipeline.Verdict{Action: a, Code: pe.Code, Enhanced: pe.Enhanced, Text: pe.Message}), nil
		}
		return nil, status.Error(codes.Unknown, err.Error())
	}
	return conv.Verdict(v), nil
}

func (s *server) OnConnect(ctx context.Context, r *stagev1.ConnectRequest) (*stagev1.Verdict, error) {
	h, ok := s.st.(pipeline.ConnectHook)
	if !ok {
		return nil, notImplemented("on_connect")
	}
	return answer(h.OnConnect(ctx, conv.ConnFrom(r.Conn)))
}

func (s *server) OnHelo(ctx context.Context, r *stagev1.HeloRequest) (*stagev1.Verdict, error) {
	h, ok := s.st.(pipeline.HeloHook)
	if !ok {
		return nil, notImplemented("on_helo")
	}
	return answer(h.OnHelo(ctx, conv.ConnFrom(r.Conn), r.Name))
}

func (s *server) OnMail(ctx context.Context, r *stagev1.MailRequest) (*stagev1.Verdict, error) {
	h, ok := s.st.(pipeline.MailHook)
	if !ok {
		return nil, notImplemented("on_mail")
	}
	return answer(h.OnMail(ctx, conv.TxnFrom(r.Txn)))
}

func (s *server) OnRcpt(ctx context.Context, r *stagev1.RcptRequest) (*stagev1.Verdict, error) {
	h, ok := s.st.(pipeline.RcptHook)
	if !ok {
		return nil, notImplemented("on_rcpt")
	}
	return answer(h.OnRcpt(ctx, conv.TxnFrom(r.Txn), conv.RecipientFrom(r.Rcpt)))
}

func (s *server) OnMessage(ctx context.Context, r *stagev1.MessageRequest) (*stagev1.Verdict, error) {
	h, ok := s.st.(pipeline.MessageHook)
	if !ok {
		return nil, notImplemented("on_message")
	}
	msg, err := s.messageFrom(r.Message)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return answer(h.OnMessage(ctx, msg))
}

func (s *server) OnRoute(ctx context.Context, r *stagev1.RouteRequest) (*stagev1.Verdict, error) {
	h, ok := s.st.(pipeline.RouteHook)
	if !ok {
		return nil, notImplemented("on_route")
	}
	msg, err := s.messageFrom(r.Message)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return answer(h.OnRoute(ctx, msg, conv.RecipientFrom(r.Rcpt)))
}

// messageFrom converts the message of a call. Served WithHeaderFields, the
// plugin ignores a header block as a protocol 1.1 plugin does (it does
// not know the field), so tests see what such a plugin would get.
func (s *server) messageFrom(p *stagev1.Message) (*pipeline.Message, error) {
	if s.fields && p != nil {
		p.HeaderBlock = nil
	}
	if r, ok := s.st.(HeaderReader); ok && r.UnparsedHeader() {
		return conv.MessageFromUnparsed(p)
	}
	return conv.MessageFrom(p)
}

func (s *server) OnEvent(ctx context.Context, r *stagev1.EventRequest) (*stagev1.EventResponse, error) {
	h, ok := s.st.(pipeline.EventHook)
	if !ok {
		return nil, notImplemented("on_event")
	}
	ev, err := conv.EventFrom(r)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := h.OnEvent(ctx, ev); err != nil {
		return nil, status.Error(codes.Unknown, fmt.Sprint(err))
	}
	return &stagev1.EventResponse{}, nil
}
