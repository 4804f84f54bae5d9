package luatest

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/luahost"
	"github.com/sluice-mta/sluice/internal/luahost/sandbox"
	"github.com/sluice-mta/sluice/pipeline"
)

// stageTimeout is the Lua deadline of a hook call under test: generous,
// because rule tests check what a script decides, not how fast (they run
// beside the race detector in `make test`).
const stageTimeout = 2 * time.Second

// testState is one sandboxed state running a test file, and the stages
// it loaded (closed with it).
type testState struct {
	file  string // the test file, as given
	dir   string // its directory: t.stage paths are relative to it
	sb    *sandbox.State
	o     Options
	hosts []*luahost.Host
	n     int // messages made, for their ids
}

func newTestState(file string, o Options) (*testState, error) {
	ts := &testState{file: file, dir: filepath.Dir(file), o: o}
	ts.sb = sandbox.New(logger(o))
	mod := ts.module()
	orig := ts.sb.L.GetGlobal("require")
	ts.sb.L.SetGlobal("require", ts.sb.L.NewFunction(func(L *lua.LState) int {
		if L.CheckString(1) == "sluice.test" {
			L.Push(mod)
			return 1
		}
		L.Push(orig)
		L.Push(L.Get(1))
		L.Call(1, 1)
		return 1
	}))
	return ts, nil
}

func (ts *testState) close() {
	for _, h := range ts.hosts {
		h.Close()
	}
	ts.sb.Close()
}

// load runs the file's top level (timeout 0: ctx bounds it).
func (ts *testState) load(ctx context.Context, proto *lua.FunctionProto, timeout time.Duration) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	_, err := ts.sb.Run(ctx, proto, nil)
	return scriptErr(err)
}

// tests lists the global functions named test_*, in the order they are
// defined in the file.
func (ts *testState) tests() []string {
	type fn struct {
		name string
		line int
	}
	var fns []fn
	ts.sb.L.G.Global.ForEach(func(k, v lua.LValue) {
		name, ok := k.(lua.LString)
		f, isFn := v.(*lua.LFunction)
		if ok && isFn && strings.HasPrefix(string(name), "test_") && f.Proto != nil {
			fns = append(fns, fn{string(name), f.Proto.LineDefined})
		}
	})
	sort.Slice(fns, func(i, j int) bool { return fns[i].line < fns[j].line })
	out := make([]string, len(fns))
	for i, f := range fns {
		out[i] = f.name
	}
	return out
}

// ctx is the context of the running test (set by sandbox.Call).
func (ts *testState) ctx() context.Context {
	if c := ts.sb.L.Context(); c != nil {
		return c
	}
	return context.Background()
}

// module builds the sluice.test module.
func (ts *testState) module() *lua.LTable {
	L := ts.sb.L
	m := L.NewTable()
	for name, fn := range map[string]lua.LGFunction{
		"stage":    ts.stage,
		"message":  ts.message,
		"eq":       ts.eq,
		"ne":       ts.ne,
		"ok":       ts.ok,
		"is_nil":   ts.isNil,
		"contains": ts.contains,
		"fail":     ts.fail,
	} {
		m.RawSetString(name, L.NewFunction(fn))
	}
	return m
}

// ---- stages ---------------------------------------------------------

// testStage is a script loaded by t.stage: a one-stage chain whose
// calls are traced.
type testStage struct {
	name  string
	chain *pipeline.Chain
	calls []pipeline.TraceCall
}

const stageType = "sluice.test.stage"

// stage is t.stage(path [, name]): path is a stage script (relative to
// the test file's directory), or with name a configuration file and the
// name of one of its Lua stages (inline or script).
func (ts *testState) stage(L *lua.LState) int {
	path := L.CheckString(1)
	name := L.OptString(2, "")
	if !filepath.IsAbs(path) {
		path = filepath.Join(ts.dir, path)
	}
	var (
		cfg  *config.Config
		spec config.StageSpec
	)
	if name == "" {
		cfg = config.Defaults()
		cfg.File = path
		spec = config.StageSpec{Name: strings.TrimSuffix(filepath.Base(path), ".lua"), Kind: config.StageLua, Script: path}
		cfg.Stages = []config.StageSpec{spec}
	} else {
		var err error
		if cfg, err = config.Load(path); err != nil {
			ts.sb.Raise("t.stage: %v", err)
		}
		found := false
		for _, s := range cfg.Stages {
			if s.Name == name {
				spec, found = s, true
			}
		}
		if !found || (spec.Kind != config.StageLua && spec.Kind != config.StageInline) {
			ts.sb.Raise("t.stage: %s has no Lua stage named %q", path, name)
		}
	}
	cfg.Lua.Timeout = stageTimeout
	h, err := luahost.NewHost(cfg, ts.sb.Logger())
	if err != nil {
		ts.sb.Raise("t.stage: %v", err)
	}
	ts.hosts = append(ts.hosts, h)
	st, err := h.Stage(spec)
	if err != nil {
		ts.sb.Raise("t.stage: %v", err)
	}
	s := &testStage{name: spec.Name}
	s.chain, err = pipeline.Compile([]pipeline.Stage{st}, pipeline.ChainOptions{
		LocalDomains: cfg.LocalDomains, RecoverPanics: true, AuthServID: "test.example",
		Logger: ts.sb.Logger(), Trace: func(tc pipeline.TraceCall) { s.calls = append(s.calls, tc) },
	})
	if err != nil {
		ts.sb.Raise("t.stage: %v", err)
	}
	ud := L.NewUserData()
	ud.Value = s
	L.SetMetatable(ud, ts.stageMeta())
	L.Push(ud)
	return 1
}

func (ts *testState) stageMeta() lua.LValue {
	L := ts.sb.L
	if mt := L.GetTypeMetatable(stageType); mt != lua.LNil {
		return mt
	}
	mt := L.NewTypeMetatable(stageType)
	methods := L.NewTable()
	for name, fn := range map[string]func(*testStage, *fixture) *lua.LTable{
		"on_connect": ts.onConnect,
		"on_helo":    ts.onHelo,
		"on_auth":    ts.onAuth,
		"on_mail":    ts.onMail,
		"on_rcpt":    ts.onRcpt,
		"on_message": ts.onMessage,
		"on_route":   ts.onRoute,
	} {
		methods.RawSetString(name, L.NewFunction(func(L *lua.LState) int {
			ud, ok := L.Get(1).(*lua.LUserData)
			s, ok2 := (*testStage)(nil), false
			if ok {
				s, ok2 = ud.Value.(*testStage)
			}
			if !ok2 {
				ts.sb.Raise("stage:%s: call it with a colon: stage:%s(msg, ...)", name, name)
			}
			m := ts.checkFixture(2, "stage:"+name)
			s.calls = s.calls[:0]
			L.Push(fn(s, m))
			return 1
		}))
	}
	mt.RawSetString("__index", methods)
	return mt
}

func (ts *testState) onConnect(s *testStage, m *fixture) *lua.LTable {
	err := s.chain.Connect(ts.ctx(), m.msg.Conn)
	return ts.result(s, err)
}

func (ts *testState) onHelo(s *testStage, m *fixture) *lua.LTable {
	name := ts.sb.L.OptString(3, m.msg.Conn.HELO)
	m.msg.Conn.HELO = name
	return ts.result(s, s.chain.Helo(ts.ctx(), m.msg.Conn, name))
}

// onAuth: stage:on_auth(msg, {username=, password=, mechanism=}).
func (ts *testState) onAuth(s *testStage, m *fixture) *lua.LTable {
	L := ts.sb.L
	cr := &pipeline.Credentials{Mechanism: "PLAIN"}
	if t, ok := L.Get(3).(*lua.LTable); ok {
		cr.Username = ts.optString(t, "username", "", "stage:on_auth")
		cr.Password = ts.optString(t, "password", "", "stage:on_auth")
		cr.Mechanism = ts.optString(t, "mechanism", "PLAIN", "stage:on_auth")
	}
	id, err := s.chain.Auth(ts.ctx(), m.msg.Conn, cr)
	res := ts.result(s, err)
	if id != nil {
		it := L.NewTable()
		it.RawSetString("name", lua.LString(id.Name))
		it.RawSetString("tenant", lua.LString(id.Tenant))
		it.RawSetString("scopes", strList(L, id.Scopes))
		res.RawSetString("identity", it)
	}
	return res
}

func (ts *testState) onMail(s *testStage, m *fixture) *lua.LTable {
	return ts.result(s, s.chain.Mail(ts.ctx(), m.msg.Txn))
}

// rcptArg is the recipient argument (3) of on_rcpt and on_route: one of
// the message's recipients, or a new one.
func (ts *testState) rcptArg(m *fixture, fn string) *pipeline.Recipient {
	addr := ts.sb.L.OptString(3, "")
	if addr == "" {
		if len(m.msg.Recipients) == 0 {
			ts.sb.Raise("%s: give a recipient: %s(msg, \"user@example.org\")", fn, fn)
		}
		return m.msg.Recipients[0]
	}
	r, err := pipeline.NewRecipient(addr)
	if err != nil {
		ts.sb.Raise("%s: %v", fn, err)
	}
	for _, have := range m.msg.Recipients {
		if have.Address == r.Address {
			return have
		}
	}
	return r
}

func (ts *testState) onRcpt(s *testStage, m *fixture) *lua.LTable {
	r := ts.rcptArg(m, "stage:on_rcpt")
	r.Relay = false
	return ts.result(s, s.chain.Rcpt(ts.ctx(), m.msg.Txn, r))
}

func (ts *testState) onMessage(s *testStage, m *fixture) *lua.LTable {
	discard, reason, err := s.chain.Message(ts.ctx(), m.msg)
	res := ts.result(s, err)
	if discard {
		res.RawSetString("discard", lua.LTrue)
		res.RawSetString("reason", lua.LString(reason))
	}
	return res
}

func (ts *testState) onRoute(s *testStage, m *fixture) *lua.LTable {
	r := ts.rcptArg(m, "stage:on_route")
	route, drop, err := s.chain.Route(ts.ctx(), m.msg, r)
	res := ts.result(s, err)
	if drop {
		res.RawSetString("discard", lua.LTrue)
	}
	if route != nil {
		L := ts.sb.L
		rt := L.NewTable()
		rt.RawSetString("kind", lua.LString(route.Kind))
		if route.Host != "" {
			rt.RawSetString("host", lua.LString(route.Host))
		}
		if route.Port != 0 {
			rt.RawSetString("port", lua.LNumber(route.Port))
		}
		if route.TLS != "" {
			rt.RawSetString("tls", lua.LString(route.TLS))
		}
		if route.AuthUser != "" {
			rt.RawSetString("auth_user", lua.LString(route.AuthUser))
		}
		rt.RawSetString("queue", lua.LString(route.QueueName(r.Domain)))
		res.RawSetString("route", rt)
	}
	return res
}

// result describes a hook call: the stage's own verdict ("none" when the
// script does not define the hook), the reply a client would see (code,
// enhanced, text: nil when accepted), the stage's failure and its edits.
func (ts *testState) result(s *testStage, err error) *lua.LTable {
	L := ts.sb.L
	res := L.NewTable()
	res.RawSetString("verdict", lua.LString("none"))
	if len(s.calls) > 0 {
		tc := s.calls[len(s.calls)-1]
		v := tc.Verdict
		res.RawSetString("verdict", lua.LString(v.Action.String()))
		if tc.Err != nil {
			res.RawSetString("verdict", lua.LString("error"))
			res.RawSetString("error", lua.LString(tc.Err.Error()))
		}
		if !v.Edits.Empty() {
			res.RawSetString("edits", editsTable(L, &v.Edits))
		}
	}
	if err != nil {
		r := pipeline.Reply(err)
		res.RawSetString("code", lua.LNumber(r.Code))
		res.RawSetString("enhanced", lua.LString(r.Enhanced.String()))
		res.RawSetString("text", lua.LString(r.Message))
	}
	return res
}

func editsTable(L *lua.LState, e *pipeline.Edits) *lua.LTable {
	t := L.NewTable()
	if len(e.Headers) > 0 {
		hs := L.NewTable()
		for _, h := range e.Headers {
			ht := L.NewTable()
			ht.RawSetString("op", lua.LString(h.Op))
			ht.RawSetString("name", lua.LString(h.Name))
			ht.RawSetString("value", lua.LString(h.Value))
			hs.Append(ht)
		}
		t.RawSetString("headers", hs)
	}
	if len(e.Tags) > 0 {
		t.RawSetString("tags", strList(L, e.Tags))
	}
	if len(e.Meta) > 0 {
		t.RawSetString("meta", strMap(L, e.Meta))
	}
	if len(e.Scratch) > 0 {
		t.RawSetString("scratch", strMap(L, e.Scratch))
	}
	if len(e.AuthResults) > 0 {
		as := L.NewTable()
		for _, a := range e.AuthResults {
			at := L.NewTable()
			at.RawSetString("method", lua.LString(a.Method))
			at.RawSetString("result", lua.LString(a.Result))
			as.Append(at)
		}
		t.RawSetString("auth_results", as)
	}
	return t
}

func strList(L *lua.LState, ss []string) *lua.LTable {
	t := L.NewTable()
	for _, s := range ss {
		t.Append(lua.LString(s))
	}
	return t
}

func strMap(L *lua.LState, m map[string]string) *lua.LTable {
	t := L.NewTable()
	for k, v := range m {
		t.RawSetString(k, lua.LString(v))
	}
	return t
}

// ---- message fixtures -----------------------------------------------

// fixture is a message made by t.message: a connection, a transaction
// and the content, as a source would hand them to the pipeline.
type fixture struct{ msg *pipeline.Message }

const fixtureType = "sluice.test.message"

// message is t.message{...}; see docs/operating.md for the fields.
func (ts *testState) message(L *lua.LState) int {
	opts, _ := L.Get(1).(*lua.LTable)
	if opts == nil {
		if L.GetTop() >= 1 && L.Get(1) != lua.LNil {
			ts.sb.Raise("t.message: want a table of fields, got %s", L.Get(1).Type())
		}
		opts = L.NewTable()
	}
	const fn = "t.message"
	ts.n++
	conn := &pipeline.Conn{
		ID:           fmt.Sprintf("conn-%d", ts.n),
		Source:       ts.optString(opts, "source", pipeline.SourceSMTP, fn),
		HELO:         ts.optString(opts, "helo", "client.example", fn),
		TLS:          ts.optString(opts, "tls", "", fn),
		RelayNetwork: lua.LVAsBool(opts.RawGetString("relay_network")),
		ServerName:   "mx.test.example",
	}
	ip, err := netip.ParseAddr(ts.optString(opts, "ip", "192.0.2.1", fn))
	if err != nil {
		ts.sb.Raise("%s: ip: %v", fn, err)
	}
	conn.RemoteIP = ip
	if user := ts.optString(opts, "auth", "", fn); user != "" {
		conn.Identity = &pipeline.Identity{Name: user, Tenant: ts.optString(opts, "tenant", "", fn), Method: "smtp-auth"}
	}
	from := ts.optString(opts, "from", "sender@example.com", fn)
	txn := &pipeline.Txn{Conn: conn, ID: fmt.Sprintf("TEST%022d", ts.n), Sender: from,
		Received: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	var to []string
	switch v := opts.RawGetString("to").(type) {
	case *lua.LNilType:
		to = []string{"rcpt@example.org"}
	case lua.LString:
		to = []string{string(v)}
	case *lua.LTable:
		to = ts.stringList(v, fn+": to")
	default:
		ts.sb.Raise("%s: to: want an address or a list of addresses, got %s", fn, v.Type())
	}
	for _, a := range to {
		r, err := pipeline.NewRecipient(a)
		if err != nil {
			ts.sb.Raise("%s: to: %v", fn, err)
		}
		r.Relay = true
		txn.Recipients = append(txn.Recipients, r)
	}
	if t, ok := opts.RawGetString("tags").(*lua.LTable); ok {
		txn.Tags = ts.stringList(t, fn+": tags")
	}
	if t, ok := opts.RawGetString("meta").(*lua.LTable); ok {
		txn.Meta = map[string]string{}
		t.ForEach(func(k, v lua.LValue) { txn.Meta[k.String()] = v.String() })
	}
	raw := ts.optString(opts, "raw", "", fn)
	if raw == "" {
		raw = ts.compose(opts, from, to)
	}
	msg, err := pipeline.ParseMessage(txn, []byte(raw))
	if err != nil {
		ts.sb.Raise("%s: %v", fn, err)
	}
	ud := L.NewUserData()
	ud.Value = &fixture{msg: msg}
	L.SetMetatable(ud, ts.fixtureMeta())
	L.Push(ud)
	return 1
}

// compose writes the message of a fixture without raw: its headers
// (default From, To, Subject) and body.
func (ts *testState) compose(opts *lua.LTable, from string, to []string) string {
	var b strings.Builder
	switch h := opts.RawGetString("headers").(type) {
	case *lua.LNilType:
		if from != "" {
			fmt.Fprintf(&b, "From: <%s>\r\n", from)
		}
		fmt.Fprintf(&b, "To: <%s>\r\nSubject: test\r\n", strings.Join(to, ">, <"))
	case *lua.LTable:
		if h.Len() > 0 { // a list of {name, value} pairs, in order
			for i := 1; i <= h.Len(); i++ {
				p, ok := h.RawGetInt(i).(*lua.LTable)
				if !ok || p.Len() != 2 {
					ts.sb.Raise("t.message: headers[%d]: want a {name, value} pair", i)
				}
				fmt.Fprintf(&b, "%s: %s\r\n", p.RawGetInt(1).String(), p.RawGetInt(2).String())
			}
			break
		}
		var names []string
		h.ForEach(func(k, _ lua.LValue) { names = append(names, k.String()) })
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(&b, "%s: %s\r\n", n, h.RawGetString(n).String())
		}
	default:
		ts.sb.Raise("t.message: headers: want a table, got %s", h.Type())
	}
	b.WriteString("\r\n")
	body := ts.optString(opts, "body", "Test message.\r\n", "t.message")
	b.WriteString(body)
	return b.String()
}

func (ts *testState) fixtureMeta() lua.LValue {
	L := ts.sb.L
	if mt := L.GetTypeMetatable(fixtureType); mt != lua.LNil {
		return mt
	}
	mt := L.NewTypeMetatable(fixtureType)
	methods := map[string]lua.LGFunction{
		// m:header(name): the first field's value, or nil.
		"header": func(L *lua.LState) int {
			m := ts.checkFixture(1, "msg:header")
			if v := m.msg.Header.Get(L.CheckString(2)); v != "" || m.msg.Header.Has(L.CheckString(2)) {
				L.Push(lua.LString(v))
			} else {
				L.Push(lua.LNil)
			}
			return 1
		},
		// m:headers(name): every value of the field, in order.
		"headers": func(L *lua.LState) int {
			m := ts.checkFixture(1, "msg:headers")
			L.Push(strList(L, m.msg.Header.Values(L.CheckString(2))))
			return 1
		},
		// m:raw(): the message as it would be spooled.
		"raw": func(L *lua.LState) int {
			m := ts.checkFixture(1, "msg:raw")
			b, err := m.msg.Bytes()
			if err != nil {
				ts.sb.Raise("msg:raw: %v", err)
			}
			L.Push(lua.LString(b))
			return 1
		},
	}
	mt.RawSetString("__index", L.NewFunction(func(L *lua.LState) int {
		m := ts.checkFixture(1, "msg")
		key := L.CheckString(2)
		if fn, ok := methods[key]; ok {
			L.Push(L.NewFunction(fn))
			return 1
		}
		switch key {
		case "sender":
			L.Push(lua.LString(m.msg.Sender))
		case "id":
			L.Push(lua.LString(m.msg.ID))
		case "recipients":
			var as []string
			for _, r := range m.msg.Recipients {
				as = append(as, r.Address)
			}
			L.Push(strList(L, as))
		case "tags":
			L.Push(strList(L, m.msg.Tags))
		case "meta":
			L.Push(strMap(L, m.msg.Meta))
		case "scratch":
			L.Push(strMap(L, m.msg.Scratch))
		default:
			L.Push(lua.LNil)
		}
		return 1
	}))
	return mt
}

func (ts *testState) checkFixture(n int, fn string) *fixture {
	if ud, ok := ts.sb.L.Get(n).(*lua.LUserData); ok {
		if f, ok := ud.Value.(*fixture); ok {
			return f
		}
	}
	ts.sb.Raise("%s: argument %d must be a message from t.message{...}, got %s", fn, n, ts.sb.L.Get(n).Type())
	return nil
}

func (ts *testState) optString(t *lua.LTable, key, def, fn string) string {
	switch v := t.RawGetString(key).(type) {
	case *lua.LNilType:
		return def
	case lua.LString:
		return string(v)
	default:
		ts.sb.Raise("%s: %s: want a string, got %s", fn, key, v.Type())
	}
	return ""
}

func (ts *testState) stringList(t *lua.LTable, what string) []string {
	var out []string
	for i := 1; i <= t.Len(); i++ {
		s, ok := t.RawGetInt(i).(lua.LString)
		if !ok {
			ts.sb.Raise("%s[%d]: want a string", what, i)
		}
		out = append(out, string(s))
	}
	return out
}
