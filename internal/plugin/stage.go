package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluice-mta/sluice/internal/plugin/conv"
	"github.com/sluice-mta/sluice/pipeline"
	stagev1 "github.com/sluice-mta/sluice/plugins/proto/stage/v1"
	"github.com/sluice-mta/sluice/plugins/sdk"
)

// on_error policies (Options.OnError).
const (
	OnErrorTempfail = "tempfail"
	OnErrorContinue = "continue"
	OnErrorReject   = "reject"
)

// Defaults for the zero values of Options.
const (
	DefaultMaxInFlight    = 64
	DefaultStartTimeout   = 10 * time.Second
	DefaultHealthInterval = 5 * time.Second
	DefaultRestartMin     = 200 * time.Millisecond
	DefaultRestartMax     = 30 * time.Second
	// hangLimit consecutive call deadlines make the plugin count as hung:
	// it is killed and restarted.
	hangLimit = 3
	// crashLoop restarts within crashWindow are reported as a crash loop.
	crashLoop   = 5
	crashWindow = time.Minute
)

// Options configure a plugin stage. Name and Cmd are required.
type Options struct {
	Name string   // the stage name; tags every log line
	Cmd  string   // the executable
	Args []string // its arguments
	// Env is added to the relay's environment for the plugin ("K=V").
	Env []string
	// Timeout bounds each hook call; 0 leaves only the chain's
	// stage_timeout.
	Timeout time.Duration
	// MaxInFlight bounds the calls in flight to the plugin; a call waits
	// for a slot within its deadline. Default DefaultMaxInFlight.
	MaxInFlight int
	// OnError is what a failed call yields: OnErrorTempfail (default, 451
	// 4.3.0, or 451 4.4.5 on a deadline), OnErrorContinue (the stage is
	// skipped) or OnErrorReject (550 5.7.1).
	OnError string
	// Config is passed to the plugin's Configure as a JSON object.
	Config map[string]any
	// Hooks, when not empty, are the hooks the configuration expects:
	// Start fails when the plugin does not implement one of them, and only
	// these are registered. Empty: every hook the plugin implements.
	Hooks []string
	// StartTimeout bounds the handshake, Configure and Describe. Default
	// DefaultStartTimeout.
	StartTimeout time.Duration
	// HealthInterval is how often the plugin's health is checked. Default
	// DefaultHealthInterval.
	HealthInterval time.Duration
	// RestartMin and RestartMax bound the backoff between restarts: the
	// first restart in a minute is immediate, the next waits RestartMin,
	// doubling up to RestartMax.
	RestartMin, RestartMax time.Duration
	// Logger receives the plugin's output and the supervisor's reports;
	// nil means slog.Default(). The stage name is added.
	Logger *slog.Logger
}

// Stage is a running plugin as a pipeline stage. Its type has every hook
// method; Hooks lists those the plugin implements, and the chain calls only
// those. It is safe for concurrent use.
type Stage struct {
	opts  Options
	log   *slog.Logger
	cfg   []byte
	desc  *stagev1.DescribeResponse
	hooks []string
	sem   chan struct{}

	mu         sync.Mutex
	cur        *instance // nil while down
	closed     bool
	restarting bool
	restarts   []time.Time // recent restarts, for backoff and crash loops
	timeouts   int         // consecutive call deadlines
	stop       chan struct{}
	wg         sync.WaitGroup
}

type instance struct {
	client *goplugin.Client
	rpc    stagev1.StageClient
	pid    int
}

var (
	_ pipeline.Stage       = (*Stage)(nil)
	_ pipeline.HookLister  = (*Stage)(nil)
	_ pipeline.Bounded     = (*Stage)(nil)
	_ pipeline.Closer      = (*Stage)(nil)
	_ pipeline.ConnectHook = (*Stage)(nil)
	_ pipeline.HeloHook    = (*Stage)(nil)
	_ pipeline.MailHook    = (*Stage)(nil)
	_ pipeline.RcptHook    = (*Stage)(nil)
	_ pipeline.MessageHook = (*Stage)(nil)
	_ pipeline.RouteHook   = (*Stage)(nil)
	_ pipeline.EventHook   = (*Stage)(nil)
)

// Start starts the plugin, configures it and asks what it implements. It
// returns an error, with nothing left running, when the plugin cannot be
// started, does not complete its handshake within StartTimeout, refuses its
// configuration, or does not implement a hook of Options.Hooks.
func Start(opts Options) (*Stage, error) {
	if opts.Name == "" || opts.Cmd == "" {
		return nil, errors.New("plugin: a stage name and a command are required")
	}
	switch opts.OnError {
	case "":
		opts.OnError = OnErrorTempfail
	case OnErrorTempfail, OnErrorContinue, OnErrorReject:
	default:
		return nil, fmt.Errorf("plugin: on_error %q: want tempfail, continue or reject", opts.OnError)
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = DefaultMaxInFlight
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = DefaultStartTimeout
	}
	if opts.HealthInterval <= 0 {
		opts.HealthInterval = DefaultHealthInterval
	}
	if opts.RestartMin <= 0 {
		opts.RestartMin = DefaultRestartMin
	}
	if opts.RestartMax < opts.RestartMin {
		opts.RestartMax = max(DefaultRestartMax, opts.RestartMin)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Stage{opts: opts, log: log.With("stage", opts.Name), sem: make(chan struct{}, opts.MaxInFlight), stop: make(chan struct{})}
	cfg := opts.Config
	if cfg == nil {
		cfg = map[string]any{}
	}
	var err error
	if s.cfg, err = json.Marshal(cfg); err != nil {
		return nil, fmt.Errorf("plugin: config: %w", err)
	}
	inst, desc, err := s.launch()
	if err != nil {
		return nil, err
	}
	if err := s.setHooks(desc); err != nil {
		inst.client.Kill()
		return nil, err
	}
	s.desc, s.cur = desc, inst
	s.log.Info("plugin started", "cmd", opts.Cmd, "pid", inst.pid, "plugin", desc.Name, "version", desc.Version,
		"protocol", fmt.Sprintf("%d.%d", sdk.ProtocolMajor, desc.ProtocolMinor), "hooks", s.hooks, "body", desc.Body.String())
	s.wg.Add(1)
	go s.watch()
	return s, nil
}

// setHooks checks the Describe answer against Options.Hooks.
func (s *Stage) setHooks(d *stagev1.DescribeResponse) error {
	if _, ok := stagev1.BodyNeed_name[int32(d.Body)]; !ok {
		return fmt.Errorf("plugin %s: describe: unknown body need %d", s.opts.Cmd, d.Body)
	}
	var have []string
	for _, h := range d.Hooks {
		n := conv.HookName(h)
		if n == "" {
			return fmt.Errorf("plugin %s: describe: unknown hook %d (built for a newer protocol?)", s.opts.Cmd, h)
		}
		have = append(have, n)
	}
	if len(s.opts.Hooks) == 0 {
		s.hooks = have
		return nil
	}
	for _, h := range s.opts.Hooks {
		if !slices.Contains(have, h) {
			return fmt.Errorf("plugin %s does not implement %s (it implements %v): remove it from hooks = {...} or update the plugin", s.opts.Cmd, h, have)
		}
	}
	s.hooks = slices.Clone(s.opts.Hooks)
	return nil
}

// launch starts one process and runs Configure and Describe.
func (s *Stage) launch() (*instance, *stagev1.DescribeResponse, error) {
	cmd := exec.Command(s.opts.Cmd, s.opts.Args...)
	cmd.Env = append(os.Environ(), s.opts.Env...)
	setPdeathsig(cmd)
	client := goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		Plugins:          goplugin.PluginSet{sdk.PluginName: &sdk.GRPCPlugin{}},
		Cmd:              cmd,
		SkipHostEnv:      true, // cmd.Env already has it, before Env so Env wins
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		StartTimeout:     s.opts.StartTimeout,
		Logger:           hclog.NewNullLogger(),
		Stderr:           &lineLogger{log: s.log, stream: "stderr"},
		SyncStderr:       &lineLogger{log: s.log, stream: "stderr"},
		SyncStdout:       &lineLogger{log: s.log, stream: "stdout"},
		GRPCDialOptions: []grpc.DialOption{grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(sdk.MaxMessageSize), grpc.MaxCallSendMsgSize(sdk.MaxMessageSize))},
	})
	fail := func(what string, err error) (*instance, *stagev1.DescribeResponse, error) {
		client.Kill()
		return nil, nil, fmt.Errorf("plugin %s: %s: %w", s.opts.Cmd, what, err)
	}
	proto, err := client.Client()
	if err != nil {
		if client.Exited() {
			return fail("start", fmt.Errorf("the plugin exited before completing its handshake (its stderr is in the log): %w", err))
		}
		return fail("start", err)
	}
	raw, err := proto.Dispense(sdk.PluginName)
	if err != nil {
		return fail("start", err)
	}
	rpc, ok := raw.(stagev1.StageClient)
	if !ok {
		return fail("start", fmt.Errorf("unexpected client type %T", raw))
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.StartTimeout)
	defer cancel()
	if _, err := rpc.Configure(ctx, &stagev1.ConfigureRequest{StageName: s.opts.Name, ConfigJson: s.cfg}); err != nil {
		return fail("configure", statusErr(err))
	}
	desc, err := rpc.Describe(ctx, &stagev1.DescribeRequest{})
	if err != nil {
		return fail("describe", statusErr(err))
	}
	inst := &instance{client: client, rpc: rpc}
	if cmd.Process != nil {
		inst.pid = cmd.Process.Pid
	}
	return inst, desc, nil
}

// statusErr turns a gRPC status into a plain error with the plugin's text.
func statusErr(err error) error {
	if st, ok := status.FromError(err); ok {
		if st.Code() == codes.DeadlineExceeded {
			if st.Message() == context.DeadlineExceeded.Error() {
				return context.DeadlineExceeded
			}
			return fmt.Errorf("%s: %w", st.Message(), context.DeadlineExceeded)
		}
		return errors.New(st.Message())
	}
	return err
}

// Name returns the stage name.
func (s *Stage) Name() string { return s.opts.Name }

// Hooks lists the hooks the plugin serves (pipeline.HookLister).
func (s *Stage) Hooks() []string { return s.hooks }

// CallTimeout is the per-call deadline (pipeline.Bounded).
func (s *Stage) CallTimeout() time.Duration { return s.opts.Timeout }

// Describe returns the plugin's answer to Describe at start.
func (s *Stage) Describe() *stagev1.DescribeResponse { return s.desc }

// PID returns the process id of the running plugin, or 0 while it is down.
func (s *Stage) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil {
		return 0
	}
	return s.cur.pid
}

// Up reports whether the plugin is running (not being restarted).
func (s *Stage) Up() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur != nil
}

// Close stops supervision and kills the plugin, waiting for it to exit. It
// may be called more than once.
func (s *Stage) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.stop)
	cur := s.cur
	s.cur = nil
	s.mu.Unlock()
	s.wg.Wait()
	if cur != nil {
		cur.client.Kill()
	}
	s.log.Info("plugin stopped")
	return nil
}

// CallError is a plugin call that failed: the plugin returned an error,
// timed out (Err wraps context.DeadlineExceeded), crashed, or is being
// restarted. With on_error = tempfail the chain turns it into a 451; its
// text is logged, never shown to the client.
type CallError struct {
	Stage, Hook string
	Err         error
}

func (e *CallError) Error() string {
	return fmt.Sprintf("plugin stage %q %s: %v", e.Stage, e.Hook, e.Err)
}

func (e *CallError) Unwrap() error { return e.Err }

// errDown: the call found no running plugin.
var errDown = errors.New("plugin is not running (restarting after a failure)")

// ErrPluginFailed is the reply of a failed call under on_error = reject.
var ErrPluginFailed = pipeline.Verdict{Action: pipeline.Reject, Code: 550, Enhanced: pipeline.EnhancedCode{5, 7, 1},
	Text: "Message refused: a policy check is unavailable"}

// invoke runs one call under the stage's deadline and concurrency bound,
// and applies on_error to a failure.
func (s *Stage) invoke(ctx context.Context, hook string, call func(context.Context, stagev1.StageClient) (*stagev1.Verdict, error)) (pipeline.Verdict, error) {
	if s.opts.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.opts.Timeout)
		defer cancel()
	}
	pv, err := s.do(ctx, call)
	if err == nil {
		var v pipeline.Verdict
		if v, err = conv.VerdictFrom(pv); err == nil {
			return v, nil
		}
	}
	return s.onError(hook, err)
}

// do takes a slot, calls the running plugin and notes failures that call
// for a restart.
func (s *Stage) do(ctx context.Context, call func(context.Context, stagev1.StageClient) (*stagev1.Verdict, error)) (*stagev1.Verdict, error) {
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for one of max_in_flight=%d slots: %w", s.opts.MaxInFlight, ctx.Err())
	}
	defer func() { <-s.sem }()
	s.mu.Lock()
	inst := s.cur
	s.mu.Unlock()
	if inst == nil {
		return nil, errDown
	}
	pv, err := call(ctx, inst.rpc)
	if err != nil {
		s.failed(inst, err)
		return nil, statusErr(err)
	}
	s.mu.Lock()
	s.timeouts = 0
	s.mu.Unlock()
	return pv, nil
}

// failed decides whether a failed call means the plugin is gone or hung.
func (s *Stage) failed(inst *instance, err error) {
	code := status.Code(err)
	switch {
	case inst.client.Exited() || code == codes.Unavailable:
		s.restart(inst, "plugin exited or closed its connection")
	case code == codes.DeadlineExceeded:
		s.mu.Lock()
		s.timeouts++
		hung := s.timeouts >= hangLimit
		s.mu.Unlock()
		if hung {
			s.restart(inst, fmt.Sprintf("%d calls in a row ran past their deadline", hangLimit))
		}
	}
}

func (s *Stage) onError(hook string, err error) (pipeline.Verdict, error) {
	ce := &CallError{Stage: s.opts.Name, Hook: hook, Err: err}
	switch s.opts.OnError {
	case OnErrorContinue:
		s.log.Warn("plugin call failed; continuing (on_error = continue)", "hook", hook, "err", err)
		return pipeline.Verdict{}, nil
	case OnErrorReject:
		s.log.Warn("plugin call failed; rejecting (on_error = reject)", "hook", hook, "err", err)
		return ErrPluginFailed, nil
	}
	return pipeline.Verdict{}, ce
}

// restart takes inst out of service and starts a replacement in the
// background, unless that is already under way.
func (s *Stage) restart(inst *instance, reason string) {
	s.mu.Lock()
	if s.closed || s.cur != inst || s.restarting {
		s.mu.Unlock()
		return
	}
	s.cur = nil
	s.restarting = true
	s.timeouts = 0
	s.wg.Add(1)
	s.mu.Unlock()
	s.log.Warn("plugin failed; restarting", "reason", reason, "pid", inst.pid)
	go s.relaunch(inst)
}

// backoff returns the delay before the next restart and whether the
// plugin is in a crash loop, from the restarts in the last crashWindow.
func (s *Stage) backoff(now time.Time) (time.Duration, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.restarts = slices.DeleteFunc(s.restarts, func(t time.Time) bool { return now.Sub(t) > crashWindow })
	s.restarts = append(s.restarts, now)
	n := len(s.restarts)
	if n == 1 {
		return 0, n // the first failure in a while: restart at once
	}
	d := s.opts.RestartMin
	for i := 2; i < n && d < s.opts.RestartMax; i++ {
		d *= 2
	}
	return min(d, s.opts.RestartMax), n
}

func (s *Stage) relaunch(old *instance) {
	defer s.wg.Done()
	old.client.Kill()
	for {
		d, n := s.backoff(time.Now())
		if n >= crashLoop {
			s.log.Error("plugin is crash looping: restarting with backoff", "restarts_last_minute", n, "backoff", d)
		}
		t := time.NewTimer(d)
		select {
		case <-s.stop:
			t.Stop()
			s.endRestart(nil)
			return
		case <-t.C:
		}
		inst, desc, err := s.launch()
		if err != nil {
			s.log.Error("plugin restart failed", "err", err)
			continue
		}
		if !slices.Equal(desc.Hooks, s.desc.Hooks) || desc.Body != s.desc.Body {
			s.log.Warn("plugin describes other hooks or body need than at start; keeping those of the start until a reload",
				"hooks_now", desc.Hooks, "body_now", desc.Body.String())
		}
		if !s.endRestart(inst) {
			inst.client.Kill()
			return
		}
		s.log.Info("plugin restarted", "pid", inst.pid)
		return
	}
}

// endRestart installs inst (nil: none) and reports false when the stage
// was closed meanwhile.
func (s *Stage) endRestart(inst *instance) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.restarting = false
	if s.closed {
		return false
	}
	s.cur = inst
	return true
}

// watch checks the plugin's health every HealthInterval and restarts a
// plugin that exited or does not answer.
func (s *Stage) watch() {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		s.mu.Lock()
		inst := s.cur
		s.mu.Unlock()
		if inst == nil {
			continue
		}
		if inst.client.Exited() {
			s.restart(inst, "plugin exited")
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), max(s.opts.HealthInterval/2, time.Second))
		_, err := inst.rpc.Health(ctx, &stagev1.HealthRequest{})
		cancel()
		if err != nil {
			s.restart(inst, "health check failed: "+statusErr(err).Error())
		}
	}
}

// OnConnect implements pipeline.ConnectHook.
func (s *Stage) OnConnect(ctx context.Context, c *pipeline.Conn) (pipeline.Verdict, error) {
	return s.invoke(ctx, "on_connect", func(ctx context.Context, r stagev1.StageClient) (*stagev1.Verdict, error) {
		return r.OnConnect(ctx, &stagev1.ConnectRequest{Conn: conv.Conn(c)})
	})
}

// OnHelo implements pipeline.HeloHook.
func (s *Stage) OnHelo(ctx context.Context, c *pipeline.Conn, name string) (pipeline.Verdict, error) {
	return s.invoke(ctx, "on_helo", func(ctx context.Context, r stagev1.StageClient) (*stagev1.Verdict, error) {
		return r.OnHelo(ctx, &stagev1.HeloRequest{Conn: conv.Conn(c), Name: name})
	})
}

// OnMail implements pipeline.MailHook.
func (s *Stage) OnMail(ctx context.Context, txn *pipeline.Txn) (pipeline.Verdict, error) {
	return s.invoke(ctx, "on_mail", func(ctx context.Context, r stagev1.StageClient) (*stagev1.Verdict, error) {
		return r.OnMail(ctx, &stagev1.MailRequest{Txn: conv.Txn(txn)})
	})
}

// OnRcpt implements pipeline.RcptHook.
func (s *Stage) OnRcpt(ctx context.Context, txn *pipeline.Txn, rcpt *pipeline.Recipient) (pipeline.Verdict, error) {
	return s.invoke(ctx, "on_rcpt", func(ctx context.Context, r stagev1.StageClient) (*stagev1.Verdict, error) {
		return r.OnRcpt(ctx, &stagev1.RcptRequest{Txn: conv.Txn(txn), Rcpt: conv.Recipient(rcpt)})
	})
}

// OnMessage implements pipeline.MessageHook. The header and body are sent
// only as far as the plugin's Describe asked.
func (s *Stage) OnMessage(ctx context.Context, msg *pipeline.Message) (pipeline.Verdict, error) {
	return s.invoke(ctx, "on_message", func(ctx context.Context, r stagev1.StageClient) (*stagev1.Verdict, error) {
		return r.OnMessage(ctx, &stagev1.MessageRequest{Message: conv.Message(msg, s.desc.Body)})
	})
}

// OnRoute implements pipeline.RouteHook.
func (s *Stage) OnRoute(ctx context.Context, msg *pipeline.Message, rcpt *pipeline.Recipient) (pipeline.Verdict, error) {
	return s.invoke(ctx, "on_route", func(ctx context.Context, r stagev1.StageClient) (*stagev1.Verdict, error) {
		return r.OnRoute(ctx, &stagev1.RouteRequest{Message: conv.Message(msg, s.desc.Body), Rcpt: conv.Recipient(rcpt)})
	})
}

// OnEvent implements pipeline.EventHook. A failure is returned (and
// logged by the caller); on_error does not apply, an event cannot be
// refused.
func (s *Stage) OnEvent(ctx context.Context, ev *pipeline.Event) error {
	req, err := conv.Event(ev)
	if err != nil {
		return &CallError{Stage: s.opts.Name, Hook: "on_event", Err: err}
	}
	if s.opts.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.opts.Timeout)
		defer cancel()
	}
	_, err = s.do(ctx, func(ctx context.Context, r stagev1.StageClient) (*stagev1.Verdict, error) {
		_, err := r.OnEvent(ctx, req)
		return nil, err
	})
	if err != nil {
		return &CallError{Stage: s.opts.Name, Hook: "on_event", Err: err}
	}
	return nil
}
