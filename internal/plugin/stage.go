package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
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
	// hangLimit consecutive call deadlines of one hook make the plugin
	// count as hung: it is killed and restarted. They are counted per hook
	// (a success of that hook resets its count), so that the answers of
	// another hook do not hide a hook that hangs every time.
	hangLimit = 3
	// crashLoop restarts within crashWindow are reported as a crash loop.
	crashLoop   = 5
	crashWindow = time.Minute
	// closeWait bounds Close's wait for calls in flight when the stage has
	// no Timeout (the chain's stage_timeout bounds them anyway).
	closeWait = 30 * time.Second
)

// Options configure a plugin stage. Name and Cmd are required.
type Options struct {
	Name string   // the stage name; tags every log line and metric
	Cmd  string   // the executable
	Args []string // its arguments
	// Env is added to the relay's environment for the plugin ("K=V").
	Env []string
	// Timeout bounds each hook call; 0 leaves only the chain's
	// stage_timeout.
	Timeout time.Duration
	// MaxInFlight bounds the calls in flight to the stage (all instances
	// together); a call waits for a slot within its deadline. Default
	// DefaultMaxInFlight.
	MaxInFlight int
	// Instances is the number of plugin processes; each call goes to the
	// least busy running one, so a crashed instance leaves the others
	// serving. Default 1.
	Instances int
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
	// RestartMin and RestartMax bound the backoff between restarts of an
	// instance: the first restart in a minute is immediate, the next waits
	// RestartMin, doubling up to RestartMax.
	RestartMin, RestartMax time.Duration
	// Logger receives the plugin's output and the supervisor's reports;
	// nil means slog.Default(). The stage name is added.
	Logger *slog.Logger
	// Metrics, when set, counts calls, their durations, restarts and live
	// instances (see NewMetrics).
	Metrics *Metrics
}

// Stage is a plugin as a pipeline stage: the host-side settings (deadline,
// max_in_flight, on_error, hooks) over a group of plugin processes, which
// a Pool may share with the stage of the next pipeline after a reload.
// Its type has every hook method; Hooks lists those the plugin implements,
// and the chain calls only those. It is safe for concurrent use.
type Stage struct {
	opts    Options
	g       *group
	hooks   []string
	sem     chan struct{}
	obs     map[string]*hookObs // nil without metrics
	closed  atomic.Bool
	release func(*group)
}

// group is the supervised processes of one plugin identity (stage name,
// command, arguments, environment, config, instances).
type group struct {
	opts  Options
	log   *slog.Logger
	cfg   []byte
	desc  *stagev1.DescribeResponse
	slots []*slot
	m     *Metrics
	key   string
	refs  int // guarded by Pool.mu
	rr    atomic.Uint32

	mu       sync.Mutex
	closed   bool
	restarts []time.Time // restarts of any instance, for crash loop reports
	stop     chan struct{}
	wg       sync.WaitGroup
}

// slot is one instance's place in a group: the running process, if any,
// and its restart state.
type slot struct {
	g        *group
	busy     atomic.Int32           // calls in flight
	timeouts [numHooks]atomic.Int32 // consecutive call deadlines, by conv.HookFromName
	probing  atomic.Bool            // a probe (see probe) is running

	mu         sync.Mutex
	cur        *instance // nil while down
	restarting bool
	restarts   []time.Time // this slot's recent restarts, for its backoff
}

type instance struct {
	client *goplugin.Client
	rpc    stagev1.StageClient
	mux    *mux // the Calls stream; nil when the plugin does not stream
	pid    int
	conn   *grpc.ClientConn // the plugin's connection, for watchExit; nil if unknown
	// unwatch ends watchExit's goroutine; nil when none runs. Set before
	// the instance is shared, called by stopInstance.
	unwatch context.CancelFunc
	// headerBlock: the plugin reads the header as one block (protocol
	// 1.2, DescribeResponse.header_block).
	headerBlock bool
	// sockDir holds the plugin's gRPC socket (socketDir); removed by
	// stopInstance. "" when the operator's env chose the directory.
	sockDir string
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

// Start starts the plugin's processes, configures them and asks what they
// implement. It returns an error, with nothing left running, when the
// plugin cannot be started, does not complete its handshake within
// StartTimeout, refuses its configuration, or does not implement a hook of
// Options.Hooks. The processes are the stage's own: Close stops them. Use
// Pool.Start to share them across reloads.
func Start(opts Options) (*Stage, error) {
	opts, err := normalize(opts)
	if err != nil {
		return nil, err
	}
	g, err := startGroup(opts)
	if err != nil {
		return nil, err
	}
	return newStage(opts, g, func(g *group) { g.close() })
}

func normalize(opts Options) (Options, error) {
	if opts.Name == "" || opts.Cmd == "" {
		return opts, errors.New("plugin: a stage name and a command are required")
	}
	switch opts.OnError {
	case "":
		opts.OnError = OnErrorTempfail
	case OnErrorTempfail, OnErrorContinue, OnErrorReject:
	default:
		return opts, fmt.Errorf("plugin: on_error %q: want tempfail, continue or reject", opts.OnError)
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = DefaultMaxInFlight
	}
	if opts.Instances <= 0 {
		opts.Instances = 1
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
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return opts, nil
}

// newStage puts the host-side settings over g; on error g is released.
func newStage(opts Options, g *group, release func(*group)) (*Stage, error) {
	s := &Stage{opts: opts, g: g, sem: make(chan struct{}, opts.MaxInFlight), release: release}
	if err := s.setHooks(g.desc); err != nil {
		release(g)
		return nil, err
	}
	if opts.Metrics != nil {
		s.obs = opts.Metrics.observers(opts.Name, s.hooks)
	}
	return s, nil
}

// startGroup starts opts.Instances processes; all must start.
func startGroup(opts Options) (*group, error) {
	g := &group{opts: opts, log: opts.Logger.With("stage", opts.Name), m: opts.Metrics, stop: make(chan struct{})}
	cfg := opts.Config
	if cfg == nil {
		cfg = map[string]any{}
	}
	var err error
	if g.cfg, err = json.Marshal(cfg); err != nil {
		return nil, fmt.Errorf("plugin: config: %w", err)
	}
	for i := 0; i < opts.Instances; i++ {
		inst, desc, err := g.launch()
		if err != nil {
			g.close()
			return nil, err
		}
		if g.desc == nil {
			if _, ok := stagev1.BodyNeed_name[int32(desc.Body)]; !ok {
				g.stopInstance(inst, true)
				g.close()
				return nil, fmt.Errorf("plugin %s: describe: unknown body need %d", opts.Cmd, desc.Body)
			}
			g.desc = desc
		}
		sl := &slot{g: g}
		g.slots = append(g.slots, sl)
		sl.watchExit(inst)
		sl.set(inst)
		g.log.Info("plugin started", "cmd", opts.Cmd, "pid", inst.pid, "instance", i+1, "of", opts.Instances,
			"plugin", desc.Name, "version", desc.Version,
			"protocol", fmt.Sprintf("%d.%d", sdk.ProtocolMajor, desc.ProtocolMinor), "body", desc.Body.String())
	}
	g.wg.Add(1)
	go g.watch()
	return g, nil
}

// setHooks checks the Describe answer against Options.Hooks.
func (s *Stage) setHooks(d *stagev1.DescribeResponse) error {
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
func (g *group) launch() (*instance, *stagev1.DescribeResponse, error) {
	cmd := exec.Command(g.opts.Cmd, g.opts.Args...)
	var sched bool // schedtrace is Sluice's (sysmonAwake): its trace lines are not logged
	cmd.Env, sched = withSysmonAwake(append(os.Environ(), g.opts.Env...))
	sockDir, err := socketDir(cmd)
	if err != nil {
		return nil, nil, fmt.Errorf("plugin %s: %w", g.opts.Cmd, err)
	}
	setProcAttrs(cmd)
	stderr := &tailBuffer{dropSched: sched}
	lim := newOutputLimiter()
	client := goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		Plugins:          goplugin.PluginSet{sdk.PluginName: &sdk.GRPCPlugin{}},
		Cmd:              cmd,
		SkipHostEnv:      true, // cmd.Env already has it, before Env so Env wins
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		StartTimeout:     g.opts.StartTimeout,
		Logger:           hclog.NewNullLogger(),
		Stderr:           io.MultiWriter(&lineLogger{log: g.log, stream: "stderr", lim: lim, sched: schedFilter{on: sched}}, stderr),
		SyncStderr:       &lineLogger{log: g.log, stream: "stderr", lim: lim}, // os.Stderr over gRPC: the runtime's trace goes to Stderr
		SyncStdout:       &lineLogger{log: g.log, stream: "stdout", lim: lim},
		GRPCDialOptions:  sdk.DialOptions(),
	})
	fail := func(what string, err error) (*instance, *stagev1.DescribeResponse, error) {
		pid := 0
		if cmd.Process != nil {
			pid = cmd.Process.Pid
		}
		stopProcess(g.log, client, pid, false)
		removeSocketDir(sockDir)
		return nil, nil, fmt.Errorf("plugin %s: %s: %w", g.opts.Cmd, what, startError(err, cmd, stderr, g.opts.StartTimeout))
	}
	proto, err := client.Client()
	if err != nil {
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
	ctx, cancel := context.WithTimeout(context.Background(), g.opts.StartTimeout)
	defer cancel()
	if _, err := rpc.Configure(ctx, &stagev1.ConfigureRequest{StageName: g.opts.Name, ConfigJson: g.cfg, BatchAnswers: true}); err != nil {
		return fail("configure", statusErr(err))
	}
	desc, err := rpc.Describe(ctx, &stagev1.DescribeRequest{})
	if err != nil {
		return fail("describe", statusErr(err))
	}
	inst := &instance{client: client, rpc: rpc, headerBlock: desc.HeaderBlock, sockDir: sockDir}
	if gc, ok := proto.(*goplugin.GRPCClient); ok {
		inst.conn = gc.Conn
	}
	if cmd.Process != nil {
		inst.pid = cmd.Process.Pid
	}
	if desc.Streaming {
		// A failure here leaves the unary RPCs, which work as well.
		if inst.mux, err = openMux(rpc, g.log.With("pid", inst.pid)); err != nil {
			g.log.Warn("plugin advertises the Calls stream but it cannot be opened; using unary calls", "pid", inst.pid, "err", err)
		}
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
func (s *Stage) Describe() *stagev1.DescribeResponse { return s.g.desc }

// PID returns the process id of the first running instance, or 0 while
// none runs.
func (s *Stage) PID() int {
	for _, p := range s.PIDs() {
		if p != 0 {
			return p
		}
	}
	return 0
}

// PIDs returns the process id of each instance, 0 for one that is down.
func (s *Stage) PIDs() []int {
	out := make([]int, len(s.g.slots))
	for i, sl := range s.g.slots {
		if inst := sl.get(); inst != nil {
			out[i] = inst.pid
		}
	}
	return out
}

// Up reports whether at least one instance is running.
func (s *Stage) Up() bool { return s.g.live() > 0 }

// Close waits for the stage's calls in flight (at most its Timeout plus a
// second, or closeWait without one), then releases its processes: they are
// stopped (killed, and waited for) unless a Pool shares them with a newer
// stage. It may be called more than once. A call that begins after Close
// fails as if the plugin were down.
func (s *Stage) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	wait := closeWait
	if s.opts.Timeout > 0 {
		wait = s.opts.Timeout + time.Second
	}
	t := time.NewTimer(wait)
	defer t.Stop()
drain:
	for range cap(s.sem) { // every slot taken: no call in flight
		select {
		case s.sem <- struct{}{}:
		case <-t.C:
			s.g.log.Warn("plugin stage closed with calls still in flight; they fail as the plugin stops", "waited", wait)
			break drain
		}
	}
	s.release(s.g)
	return nil
}

// live counts the running instances.
func (g *group) live() int {
	n := 0
	for _, sl := range g.slots {
		if sl.get() != nil {
			n++
		}
	}
	return n
}

// check is the group's readiness: an error while it is crash looping or
// has no running instance.
func (g *group) check(now time.Time) error {
	g.mu.Lock()
	n := 0
	for _, t := range g.restarts {
		if now.Sub(t) <= crashWindow {
			n++
		}
	}
	g.mu.Unlock()
	if n >= crashLoop {
		return fmt.Errorf("plugin stage %q is crash looping: %d restarts in the last minute (its stderr is in the log)", g.opts.Name, n)
	}
	if g.live() == 0 {
		return fmt.Errorf("plugin stage %q has no running instance (restarting; see the log)", g.opts.Name)
	}
	return nil
}

// close stops supervision and kills every instance, waiting for each to
// exit. It may be called more than once.
func (g *group) close() {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return
	}
	g.closed = true
	close(g.stop)
	g.mu.Unlock()
	var insts []*instance
	for _, sl := range g.slots {
		sl.mu.Lock()
		if sl.cur != nil {
			insts = append(insts, sl.cur)
		}
		sl.setLocked(nil)
		sl.mu.Unlock()
	}
	g.wg.Wait()
	var wg sync.WaitGroup
	for _, inst := range insts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.stopInstance(inst, true)
		}()
	}
	wg.Wait()
	if len(g.slots) > 0 {
		g.log.Info("plugin stopped", "instances", len(insts))
	}
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

// Call outcomes (the outcome label of sluice_plugin_calls_total).
const (
	outcomeOK          = "ok"          // the plugin answered
	outcomeError       = "error"       // the plugin returned an error, or an answer we refuse
	outcomeTimeout     = "timeout"     // the call's deadline passed (also waiting for a slot)
	outcomeUnavailable = "unavailable" // no instance was running, or it crashed during the call
)

// invoke runs one call under the stage's deadline and concurrency bound,
// and applies on_error to a failure.
func (s *Stage) invoke(ctx context.Context, hook string, req *stagev1.CallRequest) (pipeline.Verdict, error) {
	r, err := s.do(ctx, s.deadline(), hook, req)
	if err == nil {
		var v pipeline.Verdict
		if v, err = conv.VerdictFrom(r.GetVerdict()); err == nil {
			return v, nil
		}
	}
	return s.onError(hook, err)
}

// deadline is the stage's deadline for a call starting now (Timeout from
// now); zero without a Timeout. It is not put on the call's context: the
// Calls stream keeps the deadlines of all its calls with one timer, where
// a context.WithTimeout would arm a timer per call (see mux).
func (s *Stage) deadline() time.Time {
	if s.opts.Timeout <= 0 {
		return time.Time{}
	}
	return time.Now().Add(s.opts.Timeout)
}

// do takes a slot, calls the least busy running instance, records the
// call's metrics and notes failures that call for a restart. The call
// ends by ctx or by dl (zero: no deadline but ctx's), whichever is first.
func (s *Stage) do(ctx context.Context, dl time.Time, hook string, req *stagev1.CallRequest) (r *stagev1.CallResponse, err error) {
	outcome := outcomeOK
	if o := s.obs[hook]; o != nil {
		t0 := time.Now()
		defer func() {
			o.dur.Observe(time.Since(t0).Seconds())
			o.calls[outcome].Inc()
		}()
	}
	if s.closed.Load() {
		outcome = outcomeUnavailable
		return nil, errDown
	}
	if err := s.acquire(ctx, dl); err != nil {
		outcome = outcomeTimeout
		return nil, err
	}
	defer func() { <-s.sem }()
	sl, inst := s.g.pick()
	if inst == nil {
		outcome = outcomeUnavailable
		return nil, errDown
	}
	sl.busy.Add(1)
	r, err = inst.call(ctx, dl, req)
	sl.busy.Add(-1)
	if err != nil {
		code := status.Code(err)
		switch {
		case code == codes.DeadlineExceeded || ctx.Err() != nil || (!dl.IsZero() && !time.Now().Before(dl)):
			outcome = outcomeTimeout
		case code == codes.Unavailable || code == codes.Canceled || code == codes.Aborted || inst.client.Exited():
			outcome = outcomeUnavailable
		default:
			outcome = outcomeError
		}
		sl.failed(inst, hook, err)
		return nil, statusErr(err)
	}
	if to := &sl.timeouts[conv.HookFromName(hook)]; to.Load() != 0 {
		to.Store(0)
	}
	return r, nil
}

// acquire takes one of the max_in_flight slots, waiting for one until
// ctx ends or dl (zero: none) passes. A timer is armed only when the
// call has to wait.
func (s *Stage) acquire(ctx context.Context, dl time.Time) error {
	select {
	case s.sem <- struct{}{}:
		return nil
	default:
	}
	if !dl.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl)
		defer cancel()
	}
	select {
	case s.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for one of max_in_flight=%d slots: %w", s.opts.MaxInFlight, ctx.Err())
	}
}

// pick returns the least busy running instance, starting the scan at a
// rotating index so that ties are spread; nil when none runs.
func (g *group) pick() (*slot, *instance) {
	n := len(g.slots)
	if n == 1 {
		sl := g.slots[0]
		return sl, sl.get()
	}
	start := int(g.rr.Add(1))
	var best *slot
	var bestInst *instance
	var bestBusy int32
	for i := range n {
		sl := g.slots[(start+i)%n]
		inst := sl.get()
		if inst == nil {
			continue
		}
		if b := sl.busy.Load(); best == nil || b < bestBusy {
			best, bestInst, bestBusy = sl, inst, b
		}
	}
	return best, bestInst
}

func (sl *slot) get() *instance {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	return sl.cur
}

func (sl *slot) set(inst *instance) {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	sl.setLocked(inst)
}

// setLocked installs inst (nil: none) and keeps sluice_plugin_up in step.
func (sl *slot) setLocked(inst *instance) {
	was := sl.cur != nil
	sl.cur = inst
	if m := sl.g.m; m != nil && was != (inst != nil) {
		if inst != nil {
			m.up.WithLabelValues(sl.g.opts.Name).Inc()
		} else {
			m.up.WithLabelValues(sl.g.opts.Name).Dec()
		}
	}
}

// failed decides whether a failed call means the instance is gone or hung.
// UNAVAILABLE is also what a live plugin returns for "my backend is down":
// it is a call failure, and the instance is restarted only when it also
// fails a health check (a broken connection); see probe.
func (sl *slot) failed(inst *instance, hook string, err error) {
	code := status.Code(err)
	switch {
	case inst.client.Exited():
		sl.restart(inst, "plugin exited")
	case code == codes.Unavailable:
		sl.probe(inst)
	case code == codes.DeadlineExceeded:
		if sl.timeouts[conv.HookFromName(hook)].Add(1) >= hangLimit {
			sl.restart(inst, fmt.Sprintf("%d %s calls in a row ran past their deadline", hangLimit, hook))
		}
	}
}

// numHooks bounds the protocol's hook numbers (stagev1.Hook, 1 to 7;
// 0 for an unknown name), which index slot.timeouts.
const numHooks = int(stagev1.Hook_HOOK_ON_EVENT) + 1

func (s *Stage) onError(hook string, err error) (pipeline.Verdict, error) {
	ce := &CallError{Stage: s.opts.Name, Hook: hook, Err: err}
	switch s.opts.OnError {
	case OnErrorContinue:
		s.g.log.Warn("plugin call failed; continuing (on_error = continue)", "hook", hook, "err", err)
		return pipeline.Verdict{}, nil
	case OnErrorReject:
		s.g.log.Warn("plugin call failed; rejecting (on_error = reject)", "hook", hook, "err", err)
		return ErrPluginFailed, nil
	}
	return pipeline.Verdict{}, ce
}

// restart takes inst out of service and starts a replacement in the
// background, unless that is already under way.
func (sl *slot) restart(inst *instance, reason string) {
	g := sl.g
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return
	}
	sl.mu.Lock()
	if sl.cur != inst || sl.restarting {
		sl.mu.Unlock()
		g.mu.Unlock()
		return
	}
	sl.setLocked(nil)
	sl.restarting = true
	for i := range sl.timeouts {
		sl.timeouts[i].Store(0)
	}
	sl.mu.Unlock()
	g.wg.Add(1)
	g.mu.Unlock()
	g.log.Warn("plugin failed; restarting", "reason", reason, "pid", inst.pid)
	go sl.relaunch(inst)
}

// backoff records a restart and returns the delay before it and the
// stage's restarts in the last crashWindow.
func (sl *slot) backoff(now time.Time) (time.Duration, int) {
	g := sl.g
	old := func(t time.Time) bool { return now.Sub(t) > crashWindow }
	g.mu.Lock()
	g.restarts = append(slices.DeleteFunc(g.restarts, old), now)
	total := len(g.restarts)
	g.mu.Unlock()
	if g.m != nil {
		g.m.restarts.WithLabelValues(g.opts.Name).Inc()
	}
	sl.mu.Lock()
	defer sl.mu.Unlock()
	sl.restarts = append(slices.DeleteFunc(sl.restarts, old), now)
	n := len(sl.restarts)
	if n == 1 {
		return 0, total // the first failure in a while: restart at once
	}
	d := g.opts.RestartMin
	for i := 2; i < n && d < g.opts.RestartMax; i++ {
		d *= 2
	}
	return min(d, g.opts.RestartMax), total
}

func (sl *slot) relaunch(old *instance) {
	g := sl.g
	defer g.wg.Done()
	g.stopInstance(old, false)
	for {
		d, n := sl.backoff(time.Now())
		if n >= crashLoop {
			g.log.Error("plugin is crash looping: restarting with backoff", "restarts_last_minute", n, "backoff", d)
		}
		t := time.NewTimer(d)
		select {
		case <-g.stop:
			t.Stop()
			sl.endRestart(nil)
			return
		case <-t.C:
		}
		inst, desc, err := g.launch()
		if err != nil {
			g.log.Error("plugin restart failed", "err", err)
			continue
		}
		if !slices.Equal(desc.Hooks, g.desc.Hooks) || desc.Body != g.desc.Body {
			g.log.Warn("plugin describes other hooks or body need than at start; keeping those of the start until a reload",
				"hooks_now", desc.Hooks, "body_now", desc.Body.String())
		}
		sl.watchExit(inst)
		if !sl.endRestart(inst) {
			g.stopInstance(inst, true)
			return
		}
		g.log.Info("plugin restarted", "pid", inst.pid)
		return
	}
}

// endRestart installs inst (nil: none) and reports false when the group
// was closed meanwhile.
func (sl *slot) endRestart(inst *instance) bool {
	g := sl.g
	g.mu.Lock()
	defer g.mu.Unlock()
	sl.mu.Lock()
	defer sl.mu.Unlock()
	sl.restarting = false
	if g.closed {
		return false
	}
	sl.setLocked(inst)
	return true
}

// watch checks each instance's health every HealthInterval and restarts
// one that exited or does not answer.
func (g *group) watch() {
	defer g.wg.Done()
	t := time.NewTicker(g.opts.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-g.stop:
			return
		case <-t.C:
		}
		for _, sl := range g.slots {
			inst := sl.get()
			if inst == nil {
				continue
			}
			if inst.client.Exited() {
				sl.restart(inst, "plugin exited")
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), max(g.opts.HealthInterval/2, time.Second))
			_, err := inst.rpc.Health(ctx, &stagev1.HealthRequest{})
			cancel()
			if err != nil {
				sl.restart(inst, "health check failed: "+statusErr(err).Error())
			}
		}
	}
}

// OnConnect implements pipeline.ConnectHook.
func (s *Stage) OnConnect(ctx context.Context, c *pipeline.Conn) (pipeline.Verdict, error) {
	return s.invoke(ctx, "on_connect", &stagev1.CallRequest{Call: &stagev1.CallRequest_Connect{
		Connect: &stagev1.ConnectRequest{Conn: conv.Conn(c)}}})
}

// OnHelo implements pipeline.HeloHook.
func (s *Stage) OnHelo(ctx context.Context, c *pipeline.Conn, name string) (pipeline.Verdict, error) {
	return s.invoke(ctx, "on_helo", &stagev1.CallRequest{Call: &stagev1.CallRequest_Helo{
		Helo: &stagev1.HeloRequest{Conn: conv.Conn(c), Name: name}}})
}

// OnMail implements pipeline.MailHook.
func (s *Stage) OnMail(ctx context.Context, txn *pipeline.Txn) (pipeline.Verdict, error) {
	return s.invoke(ctx, "on_mail", &stagev1.CallRequest{Call: &stagev1.CallRequest_Mail{
		Mail: &stagev1.MailRequest{Txn: conv.Txn(txn)}}})
}

// OnRcpt implements pipeline.RcptHook.
func (s *Stage) OnRcpt(ctx context.Context, txn *pipeline.Txn, rcpt *pipeline.Recipient) (pipeline.Verdict, error) {
	return s.invoke(ctx, "on_rcpt", &stagev1.CallRequest{Call: &stagev1.CallRequest_Rcpt{
		Rcpt: &stagev1.RcptRequest{Txn: conv.Txn(txn), Rcpt: conv.Recipient(rcpt)}}})
}

// OnMessage implements pipeline.MessageHook. The header and body are sent
// only as far as the plugin's Describe asked.
func (s *Stage) OnMessage(ctx context.Context, msg *pipeline.Message) (pipeline.Verdict, error) {
	m, c, err := s.message(msg)
	if err != nil {
		return s.onError("on_message", err)
	}
	defer c.release()
	return s.invoke(ctx, "on_message", c.onMessage(m))
}

// OnRoute implements pipeline.RouteHook.
func (s *Stage) OnRoute(ctx context.Context, msg *pipeline.Message, rcpt *pipeline.Recipient) (pipeline.Verdict, error) {
	m, c, err := s.message(msg)
	if err != nil {
		return s.onError("on_route", err)
	}
	defer c.release()
	return s.invoke(ctx, "on_route", &stagev1.CallRequest{Call: &stagev1.CallRequest_Route{
		Route: &stagev1.RouteRequest{Message: m, Rcpt: conv.Recipient(rcpt)}}})
}

// OnEvent implements pipeline.EventHook. A failure is returned (and
// logged by the caller); on_error does not apply, an event cannot be
// refused.
func (s *Stage) OnEvent(ctx context.Context, ev *pipeline.Event) error {
	req, err := conv.Event(ev)
	if err != nil {
		return &CallError{Stage: s.opts.Name, Hook: "on_event", Err: err}
	}
	_, err = s.do(ctx, s.deadline(), "on_event", &stagev1.CallRequest{Call: &stagev1.CallRequest_Event{Event: req}})
	if err != nil {
		return &CallError{Stage: s.opts.Name, Hook: "on_event", Err: err}
	}
	return nil
}
