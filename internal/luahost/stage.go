package luahost

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/internal/luahost/sandbox"
	"github.com/sluice-mta/sluice/pipeline"
)

// Hook bits, in sandbox.Hooks order.
const (
	hookConnect = iota
	hookHelo
	hookAuth
	hookMail
	hookRcpt
	hookMessage
	hookRoute
	hookEvent
)

// Stage is a Lua stage. Its type has every hook method, and it implements
// pipeline.HookLister: Hooks lists the hooks its table defines, and
// pipeline.Compile registers only those, so the Chain never calls a hook
// the script lacks. Called directly, an undefined hook returns Continue
// without entering Lua. It is safe for concurrent use: each call takes its
// own pooled state.
type Stage struct {
	h    *Host
	name string
	idx  int
	mask uint8
	log  *slog.Logger
}

var (
	_ pipeline.Stage       = (*Stage)(nil)
	_ pipeline.HookLister  = (*Stage)(nil)
	_ pipeline.ConnectHook = (*Stage)(nil)
	_ pipeline.HeloHook    = (*Stage)(nil)
	_ pipeline.AuthHook    = (*Stage)(nil)
	_ pipeline.MailHook    = (*Stage)(nil)
	_ pipeline.RcptHook    = (*Stage)(nil)
	_ pipeline.MessageHook = (*Stage)(nil)
	_ pipeline.RouteHook   = (*Stage)(nil)
	_ pipeline.EventHook   = (*Stage)(nil)
)

// Name returns the stage name given to sluice.stage.
func (s *Stage) Name() string { return s.name }

// Hooks returns the hook names the stage's table defines, in pipeline
// order (pipeline.HookLister).
func (s *Stage) Hooks() []string {
	var out []string
	for i, h := range sandbox.Hooks {
		if s.mask&(1<<i) != 0 {
			out = append(out, h)
		}
	}
	return out
}

// HookError is a Lua hook call that failed: a runtime error in the script
// (Where is "script:line"), a deadline (Err is context.DeadlineExceeded),
// a cancelled caller (Err is context.Canceled) or a bad return value. The
// Chain maps it to 451 4.3.0 (or 451 4.4.5 for deadlines) and logs it; its
// text never reaches the client.
type HookError struct {
	Stage     string
	Hook      string // "on_rcpt"
	Where     string // "scripts/policy.lua:12", or "" when unknown
	Message   string // the Lua error without Where
	Traceback string // Lua stack traceback, for debug logs
	Err       error  // context.DeadlineExceeded or context.Canceled, else nil
}

func (e *HookError) Error() string {
	s := fmt.Sprintf("lua stage %q %s: ", e.Stage, e.Hook)
	if e.Where != "" {
		s += e.Where + ": "
	}
	s += e.Message
	if e.Err != nil && e.Message != e.Err.Error() {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *HookError) Unwrap() error { return e.Err }

// call runs one hook: it takes a pooled state, pushes the hook function and
// the arguments that push pushes, calls it under the deadline and returns
// the first result. A failed or timed-out state is discarded. With no
// function for hook (a state whose table lacks it) the result is nil.
func (s *Stage) call(ctx context.Context, hook int, push func(st *state) int) (lua.LValue, pipeline.Edits, error) {
	if s.mask&(1<<hook) == 0 {
		return lua.LNil, pipeline.Edits{}, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, pipeline.Edits{}, s.fail(hook, &HookError{Message: "not called", Err: err})
	}
	st, err := s.h.pool.get()
	if err != nil {
		return nil, pipeline.Edits{}, fmt.Errorf("lua stage %q %s: %w", s.name, sandbox.Hooks[hook], err)
	}
	fn := st.fns[s.idx][hook]
	if fn == nil {
		s.h.pool.put(st)
		return lua.LNil, pipeline.Edits{}, nil
	}
	st.hook = hook
	st.stage = s.name
	L := st.L
	st.sb.SetLogger(s.log)
	top := L.GetTop()
	L.SetContext(st.ctx.arm(ctx, s.h.timeout))
	L.Push(fn)
	n := push(st)
	perr := L.PCall(n, 1, nil)
	L.RemoveContext()
	cerr := st.ctx.end()
	edits := st.edits
	st.endCall()
	if perr == nil && cerr != nil {
		// The function returned, but after its deadline (a long builtin
		// call ends only when it ends): a call that overran is a failure,
		// never a success, and its edits are dropped.
		perr = cerr
	}
	if perr != nil {
		s.h.pool.discard(st)
		he := &HookError{}
		var ae *lua.ApiError
		if errors.As(perr, &ae) && ae.Object != nil {
			he.Where, he.Message = sandbox.SplitWhere(ae.Object.String())
			he.Traceback = ae.StackTrace
		} else {
			he.Message = perr.Error()
		}
		if cerr != nil {
			he.Err = cerr
			if ctx.Err() == nil && errors.Is(cerr, context.DeadlineExceeded) {
				he.Message = fmt.Sprintf("did not finish within %s", s.h.timeout)
			}
		}
		return nil, pipeline.Edits{}, s.fail(hook, he)
	}
	ret := L.Get(-1)
	L.SetTop(top)
	s.h.pool.put(st)
	return ret, edits, nil
}

// CallTimeout is the deadline every hook call runs under
// (lua_options.timeout); it lets the chain skip its own, longer timer.
func (s *Stage) CallTimeout() time.Duration { return s.h.timeout }

var _ pipeline.Bounded = (*Stage)(nil)

// fail fills in and logs a hook failure.
func (s *Stage) fail(hook int, he *HookError) error {
	he.Stage, he.Hook = s.name, sandbox.Hooks[hook]
	attrs := []any{"hook", he.Hook, "where", he.Where, "error", he.Message}
	if he.Err != nil {
		attrs = append(attrs, "cause", he.Err.Error())
		s.log.Warn("lua hook stopped", attrs...)
	} else {
		s.log.Error("lua hook failed", attrs...)
		if he.Traceback != "" {
			s.log.Debug("lua traceback", "hook", he.Hook, "traceback", he.Traceback)
		}
	}
	return he
}

// badReturn is the error for a hook that returned something other than
// nothing, a verdict or (in on_route) a route. Where is the line the hook
// function is defined on.
func (s *Stage) badReturn(hook int, v lua.LValue, want string) error {
	he := &HookError{Message: fmt.Sprintf("returned %s; want %s", sandbox.Describe(v), want)}
	he.Where = s.h.defined[s.idx][hook]
	return s.fail(hook, he)
}

const wantVerdict = "nothing (continue), or a verdict: sluice.accept(), sluice.reject(...), sluice.tempfail(...), sluice.discard(...)"

// verdict converts a hook's return value for every hook but on_route.
func (s *Stage) verdict(hook int, ret lua.LValue) (pipeline.Verdict, *sandbox.Verdict, error) {
	if ret == lua.LNil {
		return pipeline.Verdict{}, nil, nil
	}
	v, ok := sandbox.ToVerdict(ret)
	if !ok {
		return pipeline.Verdict{}, nil, s.badReturn(hook, ret, wantVerdict)
	}
	if v.Identity != nil && hook != hookAuth {
		return pipeline.Verdict{}, nil, s.badReturn(hook, ret, "no identity: sluice.accept{...} with an identity is for on_auth only")
	}
	return v.Verdict, v, nil
}

func (s *Stage) OnConnect(ctx context.Context, c *pipeline.Conn) (pipeline.Verdict, error) {
	ret, edits, err := s.call(ctx, hookConnect, func(st *state) int {
		st.L.Push(st.object(c, st.connMT))
		return 1
	})
	if err != nil {
		return pipeline.Verdict{}, err
	}
	v, _, err := s.verdict(hookConnect, ret)
	v.Edits = edits
	return v, err
}

func (s *Stage) OnHelo(ctx context.Context, c *pipeline.Conn, name string) (pipeline.Verdict, error) {
	ret, edits, err := s.call(ctx, hookHelo, func(st *state) int {
		st.L.Push(st.object(c, st.connMT))
		st.L.Push(lua.LString(name))
		return 2
	})
	if err != nil {
		return pipeline.Verdict{}, err
	}
	v, _, err := s.verdict(hookHelo, ret)
	v.Edits = edits
	return v, err
}

// OnAuth returns the identity of an accept. sluice.accept{...} fields
// override a base identity: the connection's identity when the source has
// already verified one (pipeline.Chain.Verified, e.g. an API key), else
// one named after creds.username with method "apikey" for HTTP and
// "smtp-auth" otherwise. So a plain sluice.accept() keeps a pre-verified
// identity, and sluice.accept{ tenant = "acme" } only sets the tenant.
func (s *Stage) OnAuth(ctx context.Context, c *pipeline.Conn, cr *pipeline.Credentials) (pipeline.Verdict, *pipeline.Identity, error) {
	ret, edits, err := s.call(ctx, hookAuth, func(st *state) int {
		st.L.Push(st.object(c, st.connMT))
		st.L.Push(st.object(cr, st.credsMT))
		return 2
	})
	if err != nil {
		return pipeline.Verdict{}, nil, err
	}
	v, lv, err := s.verdict(hookAuth, ret)
	v.Edits = edits
	if err != nil || v.Action != pipeline.Accept {
		return v, nil, err
	}
	id := &pipeline.Identity{}
	if c != nil && c.Identity != nil {
		*id = *c.Identity
		id.Scopes = append([]string(nil), c.Identity.Scopes...)
		id.Senders = append([]string(nil), c.Identity.Senders...)
	} else {
		if cr != nil {
			id.Name = cr.Username
		}
		id.Method = "smtp-auth"
		if c != nil && c.Source == pipeline.SourceHTTP {
			id.Method = "apikey"
		}
	}
	if o := lv.Identity; o != nil {
		if o.Name != "" {
			id.Name = o.Name
		}
		if o.Tenant != "" {
			id.Tenant = o.Tenant
		}
		if o.Method != "" {
			id.Method = o.Method
		}
		if o.Scopes != nil {
			id.Scopes = o.Scopes
		}
		if o.Senders != nil {
			id.Senders = o.Senders
		}
	}
	return v, id, nil
}

// OnMail passes (txn, sender); sender is txn.sender.
func (s *Stage) OnMail(ctx context.Context, txn *pipeline.Txn) (pipeline.Verdict, error) {
	ret, edits, err := s.call(ctx, hookMail, func(st *state) int {
		st.L.Push(st.object(txn, st.txnMT))
		st.L.Push(lua.LString(txn.Sender))
		return 2
	})
	if err != nil {
		return pipeline.Verdict{}, err
	}
	v, _, err := s.verdict(hookMail, ret)
	v.Edits = edits
	return v, err
}

func (s *Stage) OnRcpt(ctx context.Context, txn *pipeline.Txn, r *pipeline.Recipient) (pipeline.Verdict, error) {
	ret, edits, err := s.call(ctx, hookRcpt, func(st *state) int {
		st.L.Push(st.object(txn, st.txnMT))
		st.L.Push(st.object(r, st.rcptMT))
		return 2
	})
	if err != nil {
		return pipeline.Verdict{}, err
	}
	v, _, err := s.verdict(hookRcpt, ret)
	v.Edits = edits
	return v, err
}

func (s *Stage) OnMessage(ctx context.Context, msg *pipeline.Message) (pipeline.Verdict, error) {
	ret, edits, err := s.call(ctx, hookMessage, func(st *state) int {
		st.L.Push(st.object(msg, st.msgMT))
		return 1
	})
	if err != nil {
		return pipeline.Verdict{}, err
	}
	v, _, err := s.verdict(hookMessage, ret)
	v.Edits = edits
	return v, err
}

// OnRoute accepts a route (sluice.route.mx(), sluice.route.relay{...}),
// nothing, or a verdict (accept without a route means the default MX
// route; reject/tempfail fail this recipient; discard drops it).
func (s *Stage) OnRoute(ctx context.Context, msg *pipeline.Message, r *pipeline.Recipient) (pipeline.Verdict, error) {
	ret, edits, err := s.call(ctx, hookRoute, func(st *state) int {
		st.L.Push(st.object(msg, st.msgMT))
		st.L.Push(st.object(r, st.rcptMT))
		return 2
	})
	if err != nil {
		return pipeline.Verdict{}, err
	}
	if rt, ok := sandbox.ToRoute(ret); ok {
		v := pipeline.RouteVerdict(rt)
		v.Edits = edits
		return v, nil
	}
	if ret != lua.LNil {
		if _, ok := sandbox.ToVerdict(ret); !ok {
			return pipeline.Verdict{}, s.badReturn(hookRoute, ret, "a route (sluice.route.mx(), sluice.route.relay{...}), nothing, or a verdict")
		}
	}
	v, _, err := s.verdict(hookRoute, ret)
	v.Edits = edits
	return v, err
}

// OnEvent ignores the hook's return value: event hooks cannot change
// anything.
func (s *Stage) OnEvent(ctx context.Context, ev *pipeline.Event) error {
	_, _, err := s.call(ctx, hookEvent, func(st *state) int {
		st.L.Push(st.eventTable(ev))
		return 1
	})
	return err
}
