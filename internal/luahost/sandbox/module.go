package sandbox

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/pipeline"
)

// Verdict is the Go value behind a Lua verdict (sluice.accept, reject,
// tempfail, discard).
type Verdict struct {
	pipeline.Verdict
	// Identity is set by sluice.accept{...} with an identity table (for
	// on_auth). Fields the table leaves out are empty.
	Identity *pipeline.Identity
}

// ToVerdict returns the verdict behind a Lua value made by sluice.accept,
// reject, tempfail or discard.
func ToVerdict(v lua.LValue) (*Verdict, bool) {
	ud, ok := v.(*lua.LUserData)
	if !ok {
		return nil, false
	}
	vd, ok := ud.Value.(*Verdict)
	return vd, ok
}

// ToRoute returns the route behind a Lua value made by sluice.route.mx or
// sluice.route.relay. The route is a copy owned by the caller.
func ToRoute(v lua.LValue) (*pipeline.Route, bool) {
	ud, ok := v.(*lua.LUserData)
	if !ok {
		return nil, false
	}
	r, ok := ud.Value.(*pipeline.Route)
	if !ok {
		return nil, false
	}
	c := *r
	return &c, true
}

const (
	verdictMT = "sluice.verdict"
	routeMT   = "sluice.route"
)

// maxRetryAfter bounds sluice.tempfail's retry_after (a week).
const maxRetryAfter = 7 * 24 * time.Hour

// maxReplyText bounds verdict texts: they end up in one SMTP reply line.
const maxReplyText = 400

func (s *State) newModule() *lua.LTable {
	L := s.L
	mod := L.NewTable()

	vmt := L.NewTypeMetatable(verdictMT)
	vmt.RawSetString("__index", L.NewFunction(verdictIndex))
	vmt.RawSetString("__tostring", L.NewFunction(verdictString))
	vmt.RawSetString("__metatable", lua.LString("sluice.verdict"))
	rmt := L.NewTypeMetatable(routeMT)
	rmt.RawSetString("__index", L.NewFunction(routeIndex))
	rmt.RawSetString("__tostring", L.NewFunction(routeString))
	rmt.RawSetString("__metatable", lua.LString("sluice.route"))

	mod.RawSetString("accept", L.NewFunction(s.accept))
	mod.RawSetString("reject", L.NewFunction(func(L *lua.LState) int { return s.failVerdict(L, pipeline.Reject) }))
	mod.RawSetString("tempfail", L.NewFunction(func(L *lua.LState) int { return s.failVerdict(L, pipeline.Tempfail) }))
	mod.RawSetString("discard", L.NewFunction(s.discard))

	route := L.NewTable()
	route.RawSetString("mx", L.NewFunction(s.routeMX))
	route.RawSetString("relay", L.NewFunction(s.routeRelay))
	route.RawSetString("capture", L.NewFunction(s.routeCapture))
	s.Strict(route, "sluice.route")
	mod.RawSetString("route", route)

	log := L.NewTable()
	for name, lvl := range map[string]slog.Level{
		"debug": slog.LevelDebug, "info": slog.LevelInfo,
		"warn": slog.LevelWarn, "error": slog.LevelError,
	} {
		lvl := lvl
		log.RawSetString(name, L.NewFunction(func(L *lua.LState) int { return s.logAt(L, lvl) }))
	}
	s.Strict(log, "sluice.log")
	mod.RawSetString("log", log)

	s.Strict(mod, "sluice")
	return mod
}

// Strict gives t a metatable whose __index raises "name.key does not
// exist", so that a typo such as sluice.listen_smpt fails with a clear
// message instead of "attempt to call a nil value".
func (s *State) Strict(t *lua.LTable, name string) {
	mt := s.L.NewTable()
	mt.RawSetString("__index", s.L.NewFunction(func(L *lua.LState) int {
		key := L.Get(2)
		s.Raise("%s.%s does not exist", name, key.String())
		return 0
	}))
	s.L.SetMetatable(t, mt)
}

func (s *State) newVerdict(v *Verdict) *lua.LUserData {
	ud := s.L.NewUserData()
	ud.Value = v
	ud.Metatable = s.L.GetTypeMetatable(verdictMT)
	return ud
}

// NewRoute wraps a route as a Lua value.
func (s *State) NewRoute(r *pipeline.Route) *lua.LUserData {
	ud := s.L.NewUserData()
	ud.Value = r
	ud.Metatable = s.L.GetTypeMetatable(routeMT)
	return ud
}

// sluice.accept([identity])
func (s *State) accept(L *lua.LState) int {
	if L.Get(1) == lua.LNil {
		// Verdicts are immutable: share one plain accept per state.
		if s.acceptUD == nil {
			s.acceptUD = s.newVerdict(&Verdict{Verdict: pipeline.AcceptVerdict()})
		}
		L.Push(s.acceptUD)
		return 1
	}
	v := &Verdict{Verdict: pipeline.AcceptVerdict()}
	{
		o := s.CheckOpts(1, "sluice.accept", "name", "tenant", "method", "scopes", "senders")
		id := &pipeline.Identity{}
		o.String("name", &id.Name)
		o.String("tenant", &id.Tenant)
		if id.Tenant != "" && !pipeline.ValidTenant(id.Tenant) {
			// A tenant no API key can name would capture into an
			// inbox nobody can read.
			s.Raise("sluice.accept: tenant %q is not a tenant name: 1 to 64 ASCII letters, digits, '.', '_' or '-'", id.Tenant)
		}
		o.String("method", &id.Method)
		o.Strings("scopes", &id.Scopes)
		o.Strings("senders", &id.Senders)
		v.Identity = id
	}
	L.Push(s.newVerdict(v))
	return 1
}

// sluice.reject([code [, enhanced [, text]]]) and sluice.tempfail(...)
func (s *State) failVerdict(L *lua.LState, action pipeline.Action) int {
	fn, class, lo := "sluice.reject", 5, 500
	if action == pipeline.Tempfail {
		fn, class, lo = "sluice.tempfail", 4, 400
	}
	v := pipeline.Verdict{Action: action}
	if c := L.Get(1); c != lua.LNil {
		n, ok := c.(lua.LNumber)
		if !ok || float64(n) != float64(int(n)) || int(n) < lo || int(n) > lo+99 {
			s.Raise("%s: code must be a number from %d to %d, got %s", fn, lo, lo+99, describe(c))
		}
		v.Code = int(n)
	}
	if e := L.Get(2); e != lua.LNil {
		str, ok := e.(lua.LString)
		if !ok {
			s.Raise("%s: enhanced code must be a string like \"%d.7.1\", got %s", fn, class, describe(e))
		}
		ec, err := pipeline.ParseEnhancedCode(string(str))
		if err != nil {
			s.Raise("%s: %v", fn, err)
		}
		if ec[0] != class {
			s.Raise("%s: enhanced code %q must start with %d", fn, string(str), class)
		}
		v.Enhanced = ec
	}
	if t := L.Get(3); t != lua.LNil {
		v.Text = s.replyText(fn, t)
	}
	if action == pipeline.Tempfail && L.Get(4) != lua.LNil {
		// sluice.tempfail(code, enhanced, text, { retry_after = seconds }):
		// HTTP's Retry-After (a limit from sluice.ratelimit.check).
		o := s.CheckOpts(4, fn, "retry_after")
		var secs float64
		if o.Float("retry_after", &secs) {
			if !(secs > 0) {
				o.Fail("retry_after", "want seconds more than 0, got %v", secs)
			}
			// Longer is sent as a week: a rate limit's wait (from
			// sluice.ratelimit.check, periods up to 366 days) passed
			// straight through must not fail the hook.
			v.RetryAfter = time.Duration(min(secs, maxRetryAfter.Seconds()) * float64(time.Second))
		}
	}
	L.Push(s.newVerdict(&Verdict{Verdict: v}))
	return 1
}

func (s *State) replyText(fn string, t lua.LValue) string {
	str, ok := t.(lua.LString)
	if !ok {
		s.Raise("%s: text must be a string, got %s", fn, describe(t))
	}
	if strings.ContainsAny(string(str), "\r\n\x00") {
		s.Raise("%s: text must not contain CR, LF or NUL", fn)
	}
	if len(str) > maxReplyText {
		s.Raise("%s: text is longer than %d bytes", fn, maxReplyText)
	}
	return string(str)
}

// sluice.discard([reason])
func (s *State) discard(L *lua.LState) int {
	v := pipeline.DiscardVerdict("")
	if t := L.Get(1); t != lua.LNil {
		v.Text = s.replyText("sluice.discard", t)
	}
	L.Push(s.newVerdict(&Verdict{Verdict: v}))
	return 1
}

// sluice.route.mx([{port=, tls=}])
func (s *State) routeMX(L *lua.LState) int {
	r := pipeline.MX()
	if L.Get(1) != lua.LNil {
		o := s.CheckOpts(1, "sluice.route.mx", "port", "tls", "pool")
		o.Int("port", &r.Port)
		o.String("tls", &r.TLS)
		o.String("pool", &r.Pool)
	}
	if err := r.Validate(); err != nil {
		s.Raise("sluice.route.mx: %v", err)
	}
	L.Push(s.NewRoute(r))
	return 1
}

// sluice.route.relay{host=, port=, tls=, auth={user=, pass=}}
func (s *State) routeRelay(L *lua.LState) int {
	o := s.CheckOpts(1, "sluice.route.relay", "host", "port", "tls", "auth", "pool")
	r := &pipeline.Route{Kind: pipeline.RouteRelay}
	if !o.String("host", &r.Host) || r.Host == "" {
		o.Fail("host", "is required")
	}
	o.Int("port", &r.Port)
	o.String("tls", &r.TLS)
	o.String("pool", &r.Pool)
	if a := o.Sub("auth", "user", "pass"); a != nil {
		if !a.String("user", &r.AuthUser) || r.AuthUser == "" {
			a.Fail("user", "is required")
		}
		a.String("pass", &r.AuthPass)
	}
	if err := r.Validate(); err != nil {
		s.Raise("sluice.route.relay: %v", err)
	}
	L.Push(s.NewRoute(r))
	return 1
}

// sluice.route.capture([{tenant=}]): keep the recipient's copy in a
// sandbox inbox (the message's tenant's unless tenant is given).
func (s *State) routeCapture(L *lua.LState) int {
	r := pipeline.Capture("")
	if L.Get(1) != lua.LNil {
		o := s.CheckOpts(1, "sluice.route.capture", "tenant")
		o.String("tenant", &r.Tenant)
	}
	if err := r.Validate(); err != nil {
		s.Raise("sluice.route.capture: %v", err)
	}
	L.Push(s.NewRoute(r))
	return 1
}

// sluice.log.LEVEL(msg [, fields])
func (s *State) logAt(L *lua.LState, lvl slog.Level) int {
	if s.quiet || !s.log.Enabled(context.Background(), lvl) {
		return 0
	}
	msg := L.ToStringMeta(L.Get(1)).String()
	attrs := []slog.Attr{slog.String("where", strings.TrimSuffix(s.Where(), ":"))}
	if t, ok := L.Get(2).(*lua.LTable); ok {
		// One call must not render a table of millions of entries: the
		// fields are refused past logMaxValues values or MaxString bytes.
		if n, size := logSize(t, 0); n > logMaxValues || size > s.limits.maxString() {
			s.Raise("sluice.log: fields too large (more than %d values or %d bytes); log a summary instead", logMaxValues, s.limits.maxString())
		}
		var keys []string
		vals := map[string]any{}
		t.ForEach(func(k, v lua.LValue) {
			ks := k.String()
			gv, err := ToGo(v)
			if err != nil {
				gv = v.String()
			}
			keys = append(keys, ks)
			vals[ks] = gv
		})
		sort.Strings(keys)
		for _, k := range keys {
			attrs = append(attrs, slog.Any(k, vals[k]))
		}
	}
	s.log.LogAttrs(context.Background(), lvl, msg, attrs...)
	return 0
}

// logMaxValues bounds the number of values (at every depth) in the fields
// table of one sluice.log call.
const logMaxValues = 1000

// logSize counts the values in t (nested tables included, up to depth 32)
// and the bytes of its strings. It stops counting past logMaxValues.
func logSize(t *lua.LTable, depth int) (n, size int) {
	if depth > 32 {
		return 0, 0
	}
	for k, v := t.Next(lua.LNil); k != lua.LNil && n <= logMaxValues; k, v = t.Next(k) {
		n++
		if ks, ok := k.(lua.LString); ok {
			size += len(ks)
		}
		switch x := v.(type) {
		case lua.LString:
			size += len(x)
		case *lua.LTable:
			m, sz := logSize(x, depth+1)
			n, size = n+m, size+sz
		}
	}
	return n, size
}

func verdictIndex(L *lua.LState) int {
	v, _ := L.CheckUserData(1).Value.(*Verdict)
	if v == nil {
		return 0
	}
	switch L.CheckString(2) {
	case "action":
		L.Push(lua.LString(v.Action.String()))
	case "code":
		e := v.Err("")
		if e == nil {
			L.Push(lua.LNil)
		} else {
			L.Push(lua.LNumber(e.Code))
		}
	case "enhanced":
		e := v.Err("")
		if e == nil {
			L.Push(lua.LNil)
		} else {
			L.Push(lua.LString(e.Enhanced.String()))
		}
	case "text":
		e := v.Err("")
		switch {
		case e != nil:
			L.Push(lua.LString(e.Message))
		case v.Text != "":
			L.Push(lua.LString(v.Text))
		default:
			L.Push(lua.LNil)
		}
	default:
		L.Push(lua.LNil)
	}
	return 1
}

func verdictString(L *lua.LState) int {
	v, _ := L.CheckUserData(1).Value.(*Verdict)
	if v == nil {
		L.Push(lua.LString("verdict"))
		return 1
	}
	if e := v.Err(""); e != nil {
		L.Push(lua.LString(fmt.Sprintf("%s %d %s %s", v.Action, e.Code, e.Enhanced, e.Message)))
	} else if v.Text != "" {
		L.Push(lua.LString(v.Action.String() + " " + v.Text))
	} else {
		L.Push(lua.LString(v.Action.String()))
	}
	return 1
}

func routeIndex(L *lua.LState) int {
	r, _ := L.CheckUserData(1).Value.(*pipeline.Route)
	if r == nil {
		return 0
	}
	switch L.CheckString(2) {
	case "kind":
		L.Push(lua.LString(r.Kind))
	case "host":
		L.Push(lua.LString(r.Host))
	case "port":
		L.Push(lua.LNumber(r.Port))
	case "tls":
		L.Push(lua.LString(r.TLS))
	case "auth_user":
		L.Push(lua.LString(r.AuthUser))
	case "pool":
		L.Push(lua.LString(r.Pool))
	case "tenant":
		L.Push(lua.LString(r.Tenant))
	default:
		L.Push(lua.LNil)
	}
	return 1
}

func routeString(L *lua.LState) int {
	r, _ := L.CheckUserData(1).Value.(*pipeline.Route)
	if r == nil {
		L.Push(lua.LString("route"))
		return 1
	}
	if r.Kind == pipeline.RouteRelay {
		L.Push(lua.LString(fmt.Sprintf("route relay %s", r.QueueName(""))))
	} else {
		L.Push(lua.LString("route " + r.Kind))
	}
	return 1
}
