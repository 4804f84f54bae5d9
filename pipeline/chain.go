package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// ChainOptions configures a Chain.
type ChainOptions struct {
	// StageTimeout bounds each stage call; 0 means no bound beyond ctx.
	// Lua and plugin stages also enforce their own, usually shorter, limits.
	StageTimeout time.Duration
	// LocalDomains are domains we accept mail for from anyone.
	LocalDomains []string
	// Logger receives stage failures; nil means slog.Default().
	Logger *slog.Logger
	// Trace, when set, is called after every stage hook call, on the
	// goroutine that made it, with the stage's own answer (before the
	// chain applies its edits or maps a failure to a reply): `sluice test`
	// prints it. Unset (nil), it costs one nil check per call.
	Trace func(TraceCall)
	// StageTimer, when set, is called once per stage and hook at Compile;
	// the function it returns (nil: none) observes every call of that
	// hook: its duration and whether the stage failed (error, timeout,
	// panic) rather than answered. It must be safe for concurrent use.
	StageTimer func(stage, hook string) func(d time.Duration, failed bool)
	// RecoverPanics turns a panicking stage into a temporary failure.
	// Tests switch it off to see the panic.
	RecoverPanics bool
	// AuthServID is the authserv-id of the Authentication-Results field
	// the chain writes (RFC 8601 section 2.5): this host's name. Default
	// "localhost".
	AuthServID string
	// Rewriter, when set, rewrites each accepted message's body before
	// the Authentication-Results field and the sign hooks (BodyRewriter):
	// link and open tracking.
	Rewriter BodyRewriter
}

// TraceCall is one stage hook call as ChainOptions.Trace sees it.
type TraceCall struct {
	Stage string
	Hook  string // "on_mail", "on_rcpt", ...
	// MessageID is the transaction's message id from on_mail on (a DSN
	// Sluice generates while committing a message has its own), else "".
	MessageID string
	// Recipient is the recipient's address at on_rcpt and on_route,
	// else "".
	Recipient string
	Verdict   Verdict
	// Err is the stage's own failure (a timeout, a script error, a
	// plugin crash), before the chain turns it into a reply.
	Err error
}

// Chain is an ordered list of stages compiled once at config load into one
// slice per hook point. It is immutable and safe for concurrent use.
type Chain struct {
	opts    ChainOptions
	log     *slog.Logger
	stages  []Stage
	local   map[string]bool
	connect []ConnectHook
	helo    []HeloHook
	auth    []AuthHook
	mail    []MailHook
	rcpt    []RcptHook
	message []MessageHook
	route   []RouteHook
	event   []EventHook
	sign    []SignHook
	bounded map[Stage]bool // stages whose own deadline replaces StageTimeout
	timers  map[stageHook]func(time.Duration, bool)
}

// stageHook keys timers by stage name (unique in a chain): a stage's
// dynamic type need not be hashable.
type stageHook struct{ stage, hook string }

// addTimer resolves opts.StageTimer for one hook of s (Compile).
func (c *Chain) addTimer(s Stage, hook string) {
	if c.opts.StageTimer == nil {
		return
	}
	if f := c.opts.StageTimer(s.Name(), hook); f != nil {
		if c.timers == nil {
			c.timers = map[stageHook]func(time.Duration, bool){}
		}
		c.timers[stageHook{s.Name(), hook}] = f
	}
}

// Compile builds a Chain. Stage names must be unique and non-empty.
func Compile(stages []Stage, opts ChainOptions) (*Chain, error) {
	c := &Chain{opts: opts, log: opts.Logger, stages: stages, local: map[string]bool{}, bounded: map[Stage]bool{}}
	if c.log == nil {
		c.log = slog.Default()
	}
	for _, d := range opts.LocalDomains {
		c.local[strings.ToLower(strings.TrimSuffix(d, "."))] = true
	}
	seen := map[string]bool{}
	for _, s := range stages {
		n := s.Name()
		if n == "" {
			return nil, fmt.Errorf("pipeline: a stage has an empty name")
		}
		if seen[n] {
			return nil, fmt.Errorf("pipeline: stage name %q used twice", n)
		}
		seen[n] = true
		if b, ok := s.(Bounded); ok && b.CallTimeout() > 0 && (opts.StageTimeout <= 0 || b.CallTimeout() <= opts.StageTimeout) {
			c.bounded[s] = true
		}
		has := func(string) bool { return true }
		if hl, ok := s.(HookLister); ok {
			set := map[string]bool{}
			for _, h := range hl.Hooks() {
				set[h] = true
			}
			has = func(h string) bool { return set[h] }
		}
		if h, ok := s.(ConnectHook); ok && has("on_connect") {
			c.connect = append(c.connect, h)
			c.addTimer(s, "on_connect")
		}
		if h, ok := s.(HeloHook); ok && has("on_helo") {
			c.helo = append(c.helo, h)
			c.addTimer(s, "on_helo")
		}
		if h, ok := s.(AuthHook); ok && has("on_auth") {
			c.auth = append(c.auth, h)
			c.addTimer(s, "on_auth")
		}
		if h, ok := s.(MailHook); ok && has("on_mail") {
			c.mail = append(c.mail, h)
			c.addTimer(s, "on_mail")
		}
		if h, ok := s.(RcptHook); ok && has("on_rcpt") {
			c.rcpt = append(c.rcpt, h)
			c.addTimer(s, "on_rcpt")
		}
		if h, ok := s.(MessageHook); ok && has("on_message") {
			c.message = append(c.message, h)
			c.addTimer(s, "on_message")
		}
		if h, ok := s.(RouteHook); ok && has("on_route") {
			c.route = append(c.route, h)
			c.addTimer(s, "on_route")
		}
		if h, ok := s.(EventHook); ok && has("on_event") {
			c.event = append(c.event, h)
			c.addTimer(s, "on_event")
		}
		if h, ok := s.(SignHook); ok {
			c.sign = append(c.sign, h)
			c.addTimer(s, "sign")
		}
	}
	return c, nil
}

// Stages returns the stages in order.
func (c *Chain) Stages() []Stage { return c.stages }

// IsLocal reports whether domain is one of the configured local domains.
func (c *Chain) IsLocal(domain string) bool { return c.local[domain] }

// HasEventHooks reports whether any stage observes events.
func (c *Chain) HasEventHooks() bool { return len(c.event) > 0 }

// call runs one stage hook with the stage timeout and panic recovery, and
// normalises the outcome: a stage failure becomes an *Error (temporary,
// generic text) carrying the cause for logs.
func (c *Chain) call(ctx context.Context, st Stage, hook string, txn *Txn, rcpt *Recipient, fn func(context.Context) (Verdict, error)) (v Verdict, err error) {
	if c.opts.StageTimeout > 0 && !c.bounded[st] {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.opts.StageTimeout)
		defer cancel()
	}
	// Deferred before the recovery, so it runs after it and sees the
	// panic as a failure.
	if c.timers != nil {
		if t := c.timers[stageHook{st.Name(), hook}]; t != nil {
			start := time.Now()
			defer func() { t(time.Since(start), err != nil) }()
		}
	}
	if c.opts.RecoverPanics {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("panic: %v", p)
				v = Verdict{}
				err = c.failed(st, hook, err)
			}
		}()
	}
	v, err = fn(ctx)
	if c.opts.Trace != nil {
		tc := TraceCall{Stage: st.Name(), Hook: hook, Verdict: v, Err: err}
		if txn != nil {
			tc.MessageID = txn.ID
		}
		if rcpt != nil {
			tc.Recipient = rcpt.Address
		}
		c.opts.Trace(tc)
	}
	if err != nil {
		return Verdict{}, c.failed(st, hook, err)
	}
	return v, nil
}

// failed maps a stage's own failure to the reply the client sees and logs
// the cause. A stage may return an *Error to choose the reply itself.
func (c *Chain) failed(st Stage, hook string, err error) error {
	var e *Error
	if errors.As(err, &e) {
		if e.Stage == "" {
			e.Stage = st.Name()
		}
		return e
	}
	c.log.Warn("stage failed", "stage", st.Name(), "hook", hook, "err", err)
	base := ErrInternal
	if errors.Is(err, context.DeadlineExceeded) {
		base = ErrStageTimeout
	}
	return &Error{Code: base.Code, Enhanced: base.Enhanced, Message: base.Message, Cause: err, Stage: st.Name()}
}

// decide interprets one stage's answer at a hook point: stop is true for a
// final verdict (Accept, Reject, Tempfail, Discard) or a failure, false for
// Continue. Reject/Tempfail come back as an *Error.
func (c *Chain) decide(st Stage, v Verdict, err error) (Verdict, error, bool) {
	if err != nil {
		return Verdict{}, err, true
	}
	switch v.Action {
	case Continue:
		return v, nil, false
	case Reject, Tempfail:
		return v, v.Err(st.Name()), true
	}
	return v, nil, true
}

// edit applies a stage's edits at hook (see Edits). An edit the hook may
// not make, or a malformed one, fails the stage (a temporary failure
// logged with the reason): it is never dropped silently. txn is nil
// before MAIL; msg is nil before the content arrives.
func (c *Chain) edit(st Stage, hook string, v Verdict, txn *Txn, msg *Message) error {
	if v.Edits.Empty() || v.Action == Reject || v.Action == Tempfail {
		return nil
	}
	if err := ApplyEdits(st.Name(), hook, &v.Edits, txn, msg); err != nil {
		return c.failed(st, hook, err)
	}
	return nil
}

// Connect runs on_connect.
func (c *Chain) Connect(ctx context.Context, conn *Conn) error {
	for _, h := range c.connect {
		st := h.(Stage)
		v, err := c.call(ctx, st, "on_connect", nil, nil, func(ctx context.Context) (Verdict, error) { return h.OnConnect(ctx, conn) })
		if err == nil {
			err = c.edit(st, "on_connect", v, nil, nil)
		}
		if _, err, stop := c.decide(st, v, err); stop {
			return err
		}
	}
	return nil
}

// Helo runs on_helo.
func (c *Chain) Helo(ctx context.Context, conn *Conn, name string) error {
	for _, h := range c.helo {
		st := h.(Stage)
		v, err := c.call(ctx, st, "on_helo", nil, nil, func(ctx context.Context) (Verdict, error) { return h.OnHelo(ctx, conn, name) })
		if err == nil {
			err = c.edit(st, "on_helo", v, nil, nil)
		}
		if _, err, stop := c.decide(st, v, err); stop {
			return err
		}
	}
	return nil
}

// Auth runs on_auth until a stage accepts (returning the identity) or
// rejects. With no stage deciding, authentication fails with 535 5.7.8.
func (c *Chain) Auth(ctx context.Context, conn *Conn, cr *Credentials) (*Identity, error) {
	for _, h := range c.auth {
		st := h.(Stage)
		var id *Identity
		v, err := c.call(ctx, st, "on_auth", nil, nil, func(ctx context.Context) (Verdict, error) {
			v, i, err := h.OnAuth(ctx, conn, cr)
			id = i
			return v, err
		})
		if err == nil {
			err = c.edit(st, "on_auth", v, nil, nil)
		}
		v, err, stop := c.decide(st, v, err)
		if !stop {
			continue
		}
		if err != nil {
			return nil, err
		}
		if v.Action == Accept && id != nil {
			return id, nil
		}
		break
	}
	return nil, &Error{Code: 535, Enhanced: EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}
}

// Mail runs on_mail. txn.Sender must be set.
func (c *Chain) Mail(ctx context.Context, txn *Txn) error {
	for _, h := range c.mail {
		st := h.(Stage)
		v, err := c.call(ctx, st, "on_mail", txn, nil, func(ctx context.Context) (Verdict, error) { return h.OnMail(ctx, txn) })
		if err == nil {
			err = c.edit(st, "on_mail", v, txn, nil)
		}
		if _, err, stop := c.decide(st, v, err); stop {
			return err
		}
	}
	return nil
}

// Rcpt runs on_rcpt for r, then enforces relay control: r is accepted only
// if a stage accepted it, the connection is authenticated or comes from a
// relay network, or r's domain is local. Otherwise 554 5.7.1. On success
// the caller appends r to txn.Recipients.
func (c *Chain) Rcpt(ctx context.Context, txn *Txn, r *Recipient) error {
	for _, h := range c.rcpt {
		st := h.(Stage)
		v, err := c.call(ctx, st, "on_rcpt", txn, r, func(ctx context.Context) (Verdict, error) { return h.OnRcpt(ctx, txn, r) })
		if err == nil {
			err = c.edit(st, "on_rcpt", v, txn, nil)
		}
		v, err, stop := c.decide(st, v, err)
		if !stop {
			continue
		}
		if err != nil {
			return err
		}
		if v.Action == Accept {
			r.Relay = true
		}
		break
	}
	if r.Relay || txn.Conn.Authenticated() || txn.Conn.RelayNetwork || c.local[r.Domain] {
		r.Relay = true
		return nil
	}
	return ErrRelayDenied
}

// Message runs on_message. It first applies the header edits stages made
// at on_mail and on_rcpt, and at the end writes the transaction's
// authentication results as one Authentication-Results field, then runs
// the sign hooks (SignHook) over the final header and body. It returns
// discard=true with the reason when a stage discarded the message (accept
// and drop): a discarded message is not signed.
func (c *Chain) Message(ctx context.Context, msg *Message) (discard bool, reason string, err error) {
	if len(msg.headerEdits) > 0 {
		ApplyHeaderEdits(&msg.Header, msg.headerEdits)
		msg.headerEdits = nil
	}
	for _, h := range c.message {
		st := h.(Stage)
		v, err := c.call(ctx, st, "on_message", msg.Txn, nil, func(ctx context.Context) (Verdict, error) { return h.OnMessage(ctx, msg) })
		if err == nil {
			err = c.edit(st, "on_message", v, msg.Txn, msg)
		}
		v, err, stop := c.decide(st, v, err)
		if !stop {
			continue
		}
		if err != nil {
			return false, "", err
		}
		if v.Action == Discard {
			if v.Text == "" {
				v.Text = "discarded by stage " + st.Name()
			}
			return true, v.Text, nil
		}
		break
	}
	return false, "", c.finish(ctx, msg)
}

// finish writes the Authentication-Results field and runs the sign hooks,
// in stage order: the last edits a message gets before it is spooled.
func (c *Chain) finish(ctx context.Context, msg *Message) error {
	if c.opts.Rewriter != nil {
		if err := c.opts.Rewriter.Rewrite(ctx, msg); err != nil {
			c.log.Error("cannot rewrite the message for tracking", "msgid", msg.ID, "err", err)
			return &Error{Code: 451, Enhanced: EnhancedCode{4, 3, 0}, Message: "cannot prepare the message for tracking; try again later", Cause: err}
		}
	}
	if len(msg.AuthResults) > 0 {
		id := c.opts.AuthServID
		if id == "" {
			id = "localhost"
		}
		addField(&msg.Header, "Authentication-Results", AuthenticationResults(id, msg.AuthResults)) // formatted once
	}
	for _, h := range c.sign {
		st := h.(Stage)
		_, err := c.call(ctx, st, "sign", msg.Txn, nil, func(ctx context.Context) (Verdict, error) { return Verdict{}, h.Sign(ctx, msg) })
		if err != nil {
			return err
		}
	}
	return nil
}

// Route runs on_route for one recipient and returns its route: the first
// stage that accepts with a Route decides; with none, the route is MX.
// A Reject/Tempfail fails this recipient only. A Discard drops this
// recipient (route nil, discard true).
func (c *Chain) Route(ctx context.Context, msg *Message, r *Recipient) (route *Route, discard bool, err error) {
	for _, h := range c.route {
		st := h.(Stage)
		v, err := c.call(ctx, st, "on_route", msg.Txn, r, func(ctx context.Context) (Verdict, error) { return h.OnRoute(ctx, msg, r) })
		if err == nil {
			err = c.edit(st, "on_route", v, msg.Txn, msg)
		}
		v, err, stop := c.decide(st, v, err)
		if !stop {
			continue
		}
		if err != nil {
			return nil, false, err
		}
		if v.Action == Discard {
			return nil, true, nil
		}
		if v.Route != nil {
			if verr := v.Route.Validate(); verr != nil {
				return nil, false, c.failed(st, "on_route", verr)
			}
			return v.Route, false, nil
		}
		break
	}
	return MX(), false, nil
}

// Event runs on_event hooks. Errors are logged, never returned.
func (c *Chain) Event(ctx context.Context, ev *Event) {
	for _, h := range c.event {
		st := h.(Stage)
		_, _ = c.call(ctx, st, "on_event", nil, nil, func(ctx context.Context) (Verdict, error) { return Verdict{}, h.OnEvent(ctx, ev) })
	}
}

// Verified runs on_auth for credentials the source has already verified
// itself (an HTTP API key): conn.Identity is set to id before the hooks
// run, a stage may reject (401/403 at the source) or accept with a
// replacement identity, and when every stage continues id stands.
func (c *Chain) Verified(ctx context.Context, conn *Conn, cr *Credentials, id *Identity) (*Identity, error) {
	conn.Identity = id
	for _, h := range c.auth {
		st := h.(Stage)
		var nid *Identity
		v, err := c.call(ctx, st, "on_auth", nil, nil, func(ctx context.Context) (Verdict, error) {
			v, i, err := h.OnAuth(ctx, conn, cr)
			nid = i
			return v, err
		})
		if err == nil {
			err = c.edit(st, "on_auth", v, nil, nil)
		}
		v, err, stop := c.decide(st, v, err)
		if !stop {
			continue
		}
		if err != nil {
			conn.Identity = nil
			return nil, err
		}
		if v.Action == Accept && nid != nil {
			conn.Identity = nid
		}
		break
	}
	return conn.Identity, nil
}
