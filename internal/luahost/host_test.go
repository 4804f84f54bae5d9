package luahost

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/luahost/sandbox"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

func TestVerdicts(t *testing.T) {
	tests := []struct {
		name string
		ret  string
		want pipeline.Verdict
	}{
		{"nothing", "", pipeline.Verdict{}},
		{"nil", "return nil", pipeline.Verdict{}},
		{"accept", "return sluice.accept()", pipeline.AcceptVerdict()},
		{"reject", `return sluice.reject(550, "5.7.1", "no")`, pipeline.RejectVerdict(550, pipeline.EnhancedCode{5, 7, 1}, "no")},
		{"reject other code", `return sluice.reject(554, "5.7.9", "go away")`, pipeline.RejectVerdict(554, pipeline.EnhancedCode{5, 7, 9}, "go away")},
		{"reject defaults", `return sluice.reject()`, pipeline.Verdict{Action: pipeline.Reject}},
		{"tempfail", `return sluice.tempfail(451, "4.7.1", "later")`, pipeline.TempfailVerdict(451, pipeline.EnhancedCode{4, 7, 1}, "later")},
		{"tempfail code only", `return sluice.tempfail(421)`, pipeline.Verdict{Action: pipeline.Tempfail, Code: 421}},
		{"tempfail retry_after", `return sluice.tempfail(450, "4.7.1", "slow", { retry_after = 2.5 })`,
			pipeline.Verdict{Action: pipeline.Tempfail, Code: 450, Enhanced: pipeline.EnhancedCode{4, 7, 1}, Text: "slow", RetryAfter: 2500 * time.Millisecond}},
		{"tempfail retry_after over a week", `return sluice.tempfail(450, "4.7.1", "slow", { retry_after = 14 * 86400 })`,
			pipeline.Verdict{Action: pipeline.Tempfail, Code: 450, Enhanced: pipeline.EnhancedCode{4, 7, 1}, Text: "slow", RetryAfter: 7 * 24 * time.Hour}},
		{"discard", `return sluice.discard("spam trap")`, pipeline.DiscardVerdict("spam trap")},
		{"discard no reason", `return sluice.discard()`, pipeline.DiscardVerdict("")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, _, _ := inline(t, "on_rcpt = function(txn, rcpt) "+tt.ret+" end")
			v, err := rcptHook(t, st).OnRcpt(bg, testTxn(), rcpt(t, "x@example.org"))
			if err != nil {
				t.Fatal(err)
			}
			if v.Action != tt.want.Action || v.Code != tt.want.Code || v.Enhanced != tt.want.Enhanced || v.Text != tt.want.Text || v.Route != nil {
				t.Fatalf("got %+v, want %+v", v, tt.want)
			}
		})
	}
}

func TestVerdictDefaultsThroughChain(t *testing.T) {
	st, _, _ := inline(t, `on_rcpt = function(txn, rcpt) return sluice.reject() end`)
	ch, err := pipeline.Compile([]pipeline.Stage{st}, pipeline.ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	err = ch.Rcpt(bg, testTxn(), rcpt(t, "x@example.org"))
	r := pipeline.Reply(err)
	if r.Code != 550 || r.Enhanced != (pipeline.EnhancedCode{5, 7, 1}) {
		t.Fatalf("reply %+v", r)
	}
}

func TestVerdictArgumentErrors(t *testing.T) {
	tests := []struct{ ret, want string }{
		{`sluice.reject(450, "5.7.1", "x")`, "sluice.reject: code must be a number from 500 to 599"},
		{`sluice.reject(550, "4.7.1", "x")`, `enhanced code "4.7.1" must start with 5`},
		{`sluice.reject(550, "5.7", "x")`, "want three numbers"},
		{`sluice.reject(550, 571, "x")`, "enhanced code must be a string"},
		{`sluice.reject(550, "5.7.1", "a\r\nb")`, "must not contain CR, LF or NUL"},
		{`sluice.reject(550, "5.7.1", string.rep("x", 500))`, "longer than 400 bytes"},
		{`sluice.tempfail(550)`, "sluice.tempfail: code must be a number from 400 to 499"},
		{`sluice.tempfail(451, "5.7.1")`, "must start with 4"},
		{`sluice.tempfail(451, "4.7.1", "x", { retry_after = 0 })`, "retry_after"},
		{`sluice.tempfail(451, "4.7.1", "x", { retry_after = "soon" })`, "want a number"},
		{`sluice.tempfail(451, "4.7.1", "x", { retry = 3 })`, `unknown key "retry"`},
		{`sluice.discard({})`, "sluice.discard: text must be a string"},
		{`sluice.accept{ nme = "x" }`, `sluice.accept: unknown key "nme"`},
	}
	for _, tt := range tests {
		t.Run(tt.ret, func(t *testing.T) {
			st, _, _ := inline(t, "on_rcpt = function(txn, rcpt)\n  return "+tt.ret+"\nend")
			_, err := rcptHook(t, st).OnRcpt(bg, testTxn(), rcpt(t, "x@example.org"))
			wantErrContains(t, err, "pipeline.lua:4", tt.want)
		})
	}
}

func TestBadReturnValues(t *testing.T) {
	tests := []struct{ hook, body, want string }{
		{"on_rcpt", `return "ok"`, `pipeline.lua:3: returned string; want nothing (continue), or a verdict`},
		{"on_rcpt", `return true`, "returned boolean"},
		{"on_rcpt", `return {}`, "returned a table"},
		{"on_rcpt", `return sluice.route.mx()`, "returned a route"},
		{"on_rcpt", `return sluice.accept{ name = "x" }`, "identity is for on_auth only"},
		{"on_route", `return 42`, `pipeline.lua:3: returned number; want a route`},
	}
	for _, tt := range tests {
		t.Run(tt.hook+" "+tt.body, func(t *testing.T) {
			st, _, lb := inline(t, tt.hook+" = function(a, b)\n  "+tt.body+"\nend")
			var err error
			if tt.hook == "on_route" {
				_, err = st.(pipeline.RouteHook).OnRoute(bg, testMsg(t), rcpt(t, "x@example.org"))
			} else {
				_, err = st.(pipeline.RcptHook).OnRcpt(bg, testTxn(), rcpt(t, "x@example.org"))
			}
			wantErrContains(t, err, tt.want)
			var he *HookError
			if !errors.As(err, &he) || he.Hook != tt.hook || he.Stage != "s" {
				t.Fatalf("want a *HookError for %s, got %#v", tt.hook, err)
			}
			if !strings.Contains(lb.String(), "lua hook failed") {
				t.Fatalf("failure not logged: %s", lb)
			}
		})
	}
}

func TestRoutes(t *testing.T) {
	tests := []struct {
		name, ret string
		want      *pipeline.Route
		action    pipeline.Action
	}{
		{"mx", `return sluice.route.mx()`, &pipeline.Route{Kind: "mx"}, pipeline.Accept},
		{"mx options", `return sluice.route.mx{ port = 2525, tls = "required" }`, &pipeline.Route{Kind: "mx", Port: 2525, TLS: "required"}, pipeline.Accept},
		{"relay", `return sluice.route.relay{ host = "smtp.partner.example", port = 587, tls = "required", auth = { user = "u", pass = "p" } }`,
			&pipeline.Route{Kind: "relay", Host: "smtp.partner.example", Port: 587, TLS: "required", AuthUser: "u", AuthPass: "p"}, pipeline.Accept},
		{"relay minimal", `return sluice.route.relay{ host = "10.0.0.1" }`, &pipeline.Route{Kind: "relay", Host: "10.0.0.1"}, pipeline.Accept},
		{"accept without route", `return sluice.accept()`, nil, pipeline.Accept},
		{"nothing", ``, nil, pipeline.Continue},
		{"discard", `return sluice.discard("x")`, nil, pipeline.Discard},
		{"reject", `return sluice.reject(550, "5.1.1", "unknown")`, nil, pipeline.Reject},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, _, _ := inline(t, "on_route = function(msg, rcpt) "+tt.ret+" end")
			v, err := st.(pipeline.RouteHook).OnRoute(bg, testMsg(t), rcpt(t, "x@partner.example"))
			if err != nil {
				t.Fatal(err)
			}
			if v.Action != tt.action {
				t.Fatalf("action %v, want %v", v.Action, tt.action)
			}
			if (v.Route == nil) != (tt.want == nil) || (v.Route != nil && *v.Route != *tt.want) {
				t.Fatalf("route %+v, want %+v", v.Route, tt.want)
			}
		})
	}
}

func TestRouteThroughChain(t *testing.T) {
	st, _, _ := inline(t, `on_route = function(msg, rcpt)
    if rcpt.domain == "partner.example" then
      return sluice.route.relay { host = "smtp.partner.example", port = 587, tls = "required" }
    end
    return sluice.route.mx()
  end`)
	ch, err := pipeline.Compile([]pipeline.Stage{st}, pipeline.ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	msg := testMsg(t)
	r, _, err := ch.Route(bg, msg, rcpt(t, "bob@partner.example"))
	if err != nil || r.Kind != "relay" || r.QueueName("partner.example") != "relay:smtp.partner.example:587" {
		t.Fatalf("route %+v err %v", r, err)
	}
	r, _, err = ch.Route(bg, msg, rcpt(t, "bob@other.example"))
	if err != nil || r.Kind != "mx" {
		t.Fatalf("route %+v err %v", r, err)
	}
}

func TestRouteErrors(t *testing.T) {
	tests := []struct{ ret, want string }{
		{`sluice.route.relay{ host = "h", prot = 25 }`, `sluice.route.relay: unknown key "prot"`},
		{`sluice.route.relay{ port = 25 }`, `sluice.route.relay: key "host": is required`},
		{`sluice.route.relay{ host = "h", tls = "maybe" }`, `route tls "maybe": want one of opportunistic, required, verify, dane-or-mta-sts, none`},
		{`sluice.route.relay{ host = "h", tls = "dane-or-mta-sts" }`, `applies to mx routes only`},
		{`sluice.route.mx{ tls = "strict" }`, `sluice.route.mx: route tls "strict": want one of`},
		{`sluice.route.relay{ host = "h", port = 70000 }`, "port 70000 out of range"},
		{`sluice.route.relay{ host = "h", port = "25" }`, `key "port": want an integer, got string`},
		{`sluice.route.relay{ host = "h", auth = { user = "u", password = "p" } }`, `unknown key "auth.password"`},
		{`sluice.route.relay{ host = "h", auth = { pass = "p" } }`, `key "auth.user": is required`},
		{`sluice.route.relay("h")`, "want a table of options"},
		{`sluice.route.mx{ host = "h" }`, `sluice.route.mx: unknown key "host"`},
		{`sluice.route.smarthost{}`, "sluice.route.smarthost does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.ret, func(t *testing.T) {
			st, _, _ := inline(t, "on_route = function(msg, rcpt)\n  return "+tt.ret+"\nend")
			_, err := st.(pipeline.RouteHook).OnRoute(bg, testMsg(t), rcpt(t, "x@example.org"))
			wantErrContains(t, err, "pipeline.lua:4", tt.want)
		})
	}
}

func TestOnlyDefinedHooksRun(t *testing.T) {
	h, stages, _ := setup(t, map[string]string{
		"pipeline.lua": `
sluice.stage("rcpt_only", { on_rcpt = function() end })
sluice.stage("policy", sluice.lua("testdata/policy.lua"))
sluice.stage("all", {
  on_connect = function() end, on_helo = function() end, on_auth = function() end,
  on_mail = function() end, on_rcpt = function() end, on_message = function() end,
  on_route = function() end, on_event = function() end,
})`,
		"testdata/policy.lua": readTestdata(t, "policy.lua"),
	})
	for name, want := range map[string]string{
		"rcpt_only": "on_rcpt",
		"policy":    "on_rcpt,on_message",
		"all":       strings.Join(sandbox.Hooks, ","),
	} {
		hl, ok := stages[name].(pipeline.HookLister)
		if !ok || strings.Join(hl.Hooks(), ",") != want || stages[name].Name() != name {
			t.Errorf("%s: Hooks() = %v, want %s", name, hl.Hooks(), want)
		}
	}

	// The Chain calls only listed hooks.
	var traced []string
	var mu sync.Mutex
	ch, err := pipeline.Compile([]pipeline.Stage{stages["rcpt_only"], stages["policy"]}, pipeline.ChainOptions{
		Trace: func(tc pipeline.TraceCall) {
			mu.Lock()
			traced = append(traced, tc.Stage+"."+tc.Hook)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if ch.HasEventHooks() {
		t.Fatal("chain without on_event stages reports event hooks")
	}
	conn := testConn()
	txn := testTxn()
	msg := testMsg(t)
	_ = ch.Connect(bg, conn)
	_ = ch.Helo(bg, conn, "x")
	_, _ = ch.Auth(bg, conn, &pipeline.Credentials{Username: "u"})
	_ = ch.Mail(bg, txn)
	_ = ch.Rcpt(bg, txn, rcpt(t, "a@example.org"))
	_, _, _ = ch.Message(bg, msg)
	_, _, _ = ch.Route(bg, msg, rcpt(t, "a@example.org"))
	ch.Event(bg, testEvent())
	if got := strings.Join(traced, " "); got != "rcpt_only.on_rcpt policy.on_rcpt policy.on_message" {
		t.Fatalf("traced %q", got)
	}

	// Called directly, an undefined hook continues without a Lua state.
	h.Close() // any state use would now fail
	v, err := stages["rcpt_only"].(pipeline.RouteHook).OnRoute(bg, msg, rcpt(t, "a@example.org"))
	if err != nil || v.Action != pipeline.Continue {
		t.Fatalf("undefined hook: %+v %v", v, err)
	}
	if _, id, err := stages["rcpt_only"].(pipeline.AuthHook).OnAuth(bg, conn, &pipeline.Credentials{}); err != nil || id != nil {
		t.Fatalf("undefined on_auth: %v %v", id, err)
	}
	if err := stages["rcpt_only"].(pipeline.EventHook).OnEvent(bg, testEvent()); err != nil {
		t.Fatal(err)
	}
}

func TestScriptStage(t *testing.T) {
	_, stages, _ := setup(t, map[string]string{
		"pipeline.lua":        `sluice.stage("policy", sluice.lua("testdata/policy.lua"))`,
		"testdata/policy.lua": readTestdata(t, "policy.lua"),
	})
	st := stages["policy"]
	v, err := rcptHook(t, st).OnRcpt(bg, testTxn(), rcpt(t, "x@blocked.example"))
	if err != nil || v.Action != pipeline.Reject || v.Text != "Recipient domain blocked" {
		t.Fatalf("blocked: %+v %v", v, err)
	}
	v, err = rcptHook(t, st).OnRcpt(bg, testTxn(), rcpt(t, "x@fine.example"))
	if err != nil || v.Action != pipeline.Continue {
		t.Fatalf("fine: %+v %v", v, err)
	}
	msg := testMsg(t)
	if _, err := messageApplied(st, msg); err != nil {
		t.Fatal(err)
	}
	if msg.Header.Get("X-Policy") != "checked" || len(msg.Tags) != 1 || msg.Tags[0] != "policy" {
		t.Fatalf("header %q tags %v", msg.Header.Get("X-Policy"), msg.Tags)
	}
}

func TestScriptRuntimeErrorHasScriptLine(t *testing.T) {
	h, stages, lb := setup(t, map[string]string{
		"pipeline.lua":        `sluice.stage("policy", sluice.lua("testdata/policy.lua"))`,
		"testdata/policy.lua": readTestdata(t, "policy.lua"),
	})
	_, err := rcptHook(t, stages["policy"]).OnRcpt(bg, testTxn(), rcpt(t, "boom@example.org"))
	wantErrContains(t, err, `lua stage "policy" on_rcpt:`, "testdata/policy.lua:13: boom requested")
	var he *HookError
	if !errors.As(err, &he) || !strings.HasSuffix(he.Where, "testdata/policy.lua:13") || he.Message != "boom requested" || he.Err != nil {
		t.Fatalf("HookError %+v", he)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatal("a script error must not look like a timeout")
	}
	logs := lb.String()
	for _, want := range []string{"lua hook failed", "stage=policy", "hook=on_rcpt", "policy.lua:13", "boom requested"} {
		if !strings.Contains(logs, want) {
			t.Fatalf("log lacks %q:\n%s", want, logs)
		}
	}
	if h.Stats().Discarded != 1 {
		t.Fatalf("errored state not discarded: %+v", h.Stats())
	}
	// The client sees a generic 451 4.3.0.
	ch, _ := pipeline.Compile([]pipeline.Stage{stages["policy"]}, pipeline.ChainOptions{Logger: discardLogger()})
	r := pipeline.Reply(ch.Rcpt(bg, testTxn(), rcpt(t, "boom@example.org")))
	if r.Code != 451 || r.Enhanced != (pipeline.EnhancedCode{4, 3, 0}) || strings.Contains(r.Message, "boom") {
		t.Fatalf("client reply %+v", r)
	}
}

func TestInlineRuntimeError(t *testing.T) {
	st, _, _ := inline(t, "on_rcpt = function(txn, rcpt)\n  local x = nil\n  return x.field\nend")
	_, err := rcptHook(t, st).OnRcpt(bg, testTxn(), rcpt(t, "a@example.org"))
	wantErrContains(t, err, "pipeline.lua:5:")
}

func TestInfiniteLoopTimesOut(t *testing.T) {
	dir := testutil.TempFiles(t, map[string]string{
		"pipeline.lua": `
sluice.lua_options { timeout = "50ms" }
sluice.stage("policy", sluice.lua("policy.lua"))
sluice.stage("loop", { on_rcpt = function(txn, rcpt) while true do end end })`,
		"policy.lua": readTestdata(t, "policy.lua"),
	})
	cfg, err := config.Load(dir + "/pipeline.lua")
	if err != nil {
		t.Fatal(err)
	}
	h, stages, _ := hostFor(t, cfg)
	for _, name := range []string{"loop", "policy"} {
		t.Run(name, func(t *testing.T) {
			st := rcptHook(t, stages[name])
			before := h.Stats().Discarded
			start := time.Now()
			_, err := st.OnRcpt(bg, testTxn(), rcpt(t, "loop@example.org"))
			elapsed := time.Since(start)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("err = %v, want DeadlineExceeded", err)
			}
			wantErrContains(t, err, "did not finish within 50ms")
			if elapsed > time.Second {
				t.Fatalf("took %v with a 50ms deadline", elapsed)
			}
			if h.Stats().Discarded != before+1 {
				t.Fatalf("timed-out state not discarded: %+v", h.Stats())
			}
			// The chain maps it to 451 4.4.5.
			ch, _ := pipeline.Compile([]pipeline.Stage{stages[name]}, pipeline.ChainOptions{Logger: discardLogger()})
			r := pipeline.Reply(ch.Rcpt(bg, testTxn(), rcpt(t, "loop@example.org")))
			if r.Code != 451 || r.Enhanced != (pipeline.EnhancedCode{4, 4, 5}) {
				t.Fatalf("reply %+v", r)
			}
			// The pool keeps working afterwards.
			for i := 0; i < 20; i++ {
				v, err := stages["policy"].(pipeline.RcptHook).OnRcpt(bg, testTxn(), rcpt(t, "x@blocked.example"))
				if err != nil || v.Action != pipeline.Reject {
					t.Fatalf("call %d after timeout: %+v %v", i, v, err)
				}
			}
		})
	}
}

func TestCallerDeadlineWins(t *testing.T) {
	_, stages, _ := setup(t, map[string]string{"pipeline.lua": `
sluice.lua_options { timeout = "10s" }
sluice.stage("s", { on_rcpt = function() while true do end end })`})
	ctx, cancel := context.WithTimeout(bg, 30*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := rcptHook(t, stages["s"]).OnRcpt(ctx, testTxn(), rcpt(t, "a@example.org"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %v: the caller's 30ms deadline must win over the 10s Lua timeout", d)
	}
}

func TestCancelledCaller(t *testing.T) {
	st, h, _ := inline(t, `on_rcpt = function() return sluice.accept() end`)
	ctx, cancel := context.WithCancel(bg)
	cancel()
	_, err := rcptHook(t, st).OnRcpt(ctx, testTxn(), rcpt(t, "a@example.org"))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if h.Stats().Discarded != 0 {
		t.Fatal("no state should be used for a cancelled caller")
	}
}

func TestSandbox(t *testing.T) {
	tests := []struct{ code, want string }{
		{`return os.exit()`, "attempt to index a non-table object(nil)"},
		{`return io.open("/etc/passwd")`, "attempt to index a non-table object(nil)"},
		{`return debug.getinfo(1)`, "attempt to index a non-table object(nil)"},
		{`return package.loaded`, "attempt to index a non-table object(nil)"},
		{`return coroutine.create(function() end)`, "attempt to index a non-table object(nil)"},
		{`return dofile("/etc/passwd")`, "attempt to call a non-function object"},
		{`return loadfile("/etc/passwd")`, "attempt to call a non-function object"},
		{`return load("return 1")`, "attempt to call a non-function object"},
		{`return loadstring("return 1")`, "attempt to call a non-function object"},
		{`return collectgarbage()`, "attempt to call a non-function object"},
		{`return module("x")`, "attempt to call a non-function object"},
		{`return require("os")`, `require: module "os" is not available in the sandbox`},
		{`return require("io")`, `require: module "io" is not available`},
		{`return string.rep("x", 2 * 1024 * 1024)`, "string.rep: result longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.code, func(t *testing.T) {
			st, _, _ := inline(t, "on_connect = function(conn)\n  "+tt.code+"\nend")
			_, err := st.(pipeline.ConnectHook).OnConnect(bg, testConn())
			wantErrContains(t, err, "pipeline.lua:4", tt.want)
		})
	}
	// What is available.
	st, _, _ := inline(t, `on_connect = function(conn)
    local s = require("sluice")
    assert(s == sluice)
    assert(string.format("%d", 3) == "3" and table.concat({"a","b"}, ",") == "a,b")
    assert(math.floor(2.5) == 2 and ("abc"):upper() == "ABC")
    assert(type(pcall) == "function" and type(setmetatable) == "function")
    return sluice.reject(550, "5.7.1", "ok")
  end`)
	v, err := st.(pipeline.ConnectHook).OnConnect(bg, testConn())
	if err != nil || v.Text != "ok" {
		t.Fatalf("%+v %v", v, err)
	}
}

func TestScriptsHaveSeparateGlobals(t *testing.T) {
	_, stages, _ := setup(t, map[string]string{
		"pipeline.lua": `
sluice.stage("a", sluice.lua("testdata/globals_a.lua"))
sluice.stage("b", sluice.lua("testdata/globals_b.lua"))`,
		"testdata/globals_a.lua": readTestdata(t, "globals_a.lua"),
		"testdata/globals_b.lua": readTestdata(t, "globals_b.lua"),
	})
	va, _ := stages["a"].(pipeline.ConnectHook).OnConnect(bg, testConn())
	vb, _ := stages["b"].(pipeline.ConnectHook).OnConnect(bg, testConn())
	if va.Text != "aa" || vb.Text != "bb" {
		t.Fatalf("a=%q b=%q: scripts share globals", va.Text, vb.Text)
	}
}

func TestConfigTopLevelRunsQuietlyPerState(t *testing.T) {
	_, stages, lb2 := setup(t, map[string]string{"pipeline.lua": `
print("top level")
sluice.log.info("top level log")
sluice.stage("s", { on_rcpt = function() print("in hook", 1) end })`})
	// Force several new states with concurrent calls.
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = rcptHook(t, stages["s"]).OnRcpt(bg, testTxn(), rcpt(t, "a@example.org"))
		}()
	}
	wg.Wait()
	if strings.Contains(lb2.String(), "top level") {
		t.Fatalf("config top level replayed noisily:\n%s", lb2)
	}
	if !strings.Contains(lb2.String(), `msg="in hook\t1"`) || !strings.Contains(lb2.String(), "stage=s") {
		t.Fatalf("print in hook not logged with stage:\n%s", lb2)
	}
}

func TestLogging(t *testing.T) {
	st, _, lb := inline(t, `on_rcpt = function(txn, rcpt)
    sluice.log.info("checked", { rcpt = rcpt.address, score = 3, ok = true })
    sluice.log.warn("careful")
    sluice.log.error("bad", { n = 1.5 })
    sluice.log.debug("detail")
  end`)
	if _, err := rcptHook(t, st).OnRcpt(bg, testTxn(), rcpt(t, "bob@example.org")); err != nil {
		t.Fatal(err)
	}
	logs := lb.String()
	for _, want := range []string{
		`level=INFO msg=checked stage=s where=` + "", `ok=true rcpt=bob@example.org score=3`,
		`level=WARN msg=careful stage=s`, `level=ERROR msg=bad stage=s`, `n=1.5`, `level=DEBUG msg=detail`,
		`pipeline.lua:4`,
	} {
		if !strings.Contains(logs, want) {
			t.Fatalf("log lacks %q:\n%s", want, logs)
		}
	}
}

func TestStaleObjectsRaise(t *testing.T) {
	st, _, _ := inline(t, `on_rcpt = function(txn, rcpt)
    if saved then
      return sluice.reject(550, "5.7.1", saved.sender)
    end
    saved = txn
  end`)
	h := rcptHook(t, st)
	if _, err := h.OnRcpt(bg, testTxn(), rcpt(t, "a@example.org")); err != nil {
		t.Fatal(err)
	}
	_, err := h.OnRcpt(bg, testTxn(), rcpt(t, "a@example.org"))
	wantErrContains(t, err, "txn is no longer valid")
}

func TestConcurrentCalls(t *testing.T) {
	_, stages, _ := setup(t, map[string]string{
		"pipeline.lua": `
sluice.lua_options { pool_size = 4, timeout = "10s" } -- a loaded CI box must not time out
sluice.stage("s", {
  on_rcpt = function(txn, rcpt)
    txn:set_meta("seen", rcpt.address)
    txn:tag(rcpt.domain)
    if rcpt.domain == "blocked.example" then
      return sluice.reject(550, "5.7.1", "blocked " .. rcpt.local_part)
    end
    return sluice.accept()
  end,
  on_message = function(msg)
    msg:add_header("X-N", tostring(#msg.recipients))
  end,
})`})
	st := stages["s"]
	const workers, calls = 16, 300
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < calls; i++ {
				txn := testTxn()
				domain := "ok.example"
				if i%3 == 0 {
					domain = "blocked.example"
				}
				addr := fmt.Sprintf("u%d-%d@%s", w, i, domain)
				v, err := rcptApplied(st, txn, rcpt(t, addr))
				if err != nil {
					errs <- err
					return
				}
				if domain == "blocked.example" {
					if v.Action != pipeline.Reject || v.Text != fmt.Sprintf("blocked u%d-%d", w, i) {
						errs <- fmt.Errorf("got %+v for %s", v, addr)
						return
					}
				} else if v.Action != pipeline.Accept {
					errs <- fmt.Errorf("got %+v for %s", v, addr)
					return
				}
				// A reject drops the stage's edits; the verdict still
				// carries them, per call.
				if v.Edits.Meta["seen"] != addr || v.Edits.Tags[0] != domain {
					errs <- fmt.Errorf("edits %+v for %s", v.Edits, addr)
					return
				}
				msg := testMsg(t)
				if _, err := messageApplied(st, msg); err != nil || msg.Header.Get("X-N") != "1" {
					errs <- fmt.Errorf("on_message: %v %q", err, msg.Header.Get("X-N"))
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestPoolBounded(t *testing.T) {
	h, stages, _ := setup(t, map[string]string{"pipeline.lua": `
sluice.lua_options { pool_size = 2 }
sluice.stage("s", { on_rcpt = function() end })`})
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for j := 0; j < 50; j++ {
				_, _ = stages["s"].(pipeline.RcptHook).OnRcpt(bg, testTxn(), rcpt(t, "a@example.org"))
			}
		}()
	}
	close(start)
	wg.Wait()
	if s := h.Stats(); s.Idle > 2 || s.Created < 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestHostClose(t *testing.T) {
	st, h, _ := inline(t, `on_rcpt = function() end`)
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := rcptHook(t, st).OnRcpt(bg, testTxn(), rcpt(t, "a@example.org"))
	if !errors.Is(err, errClosed) {
		t.Fatalf("err = %v", err)
	}
}

func TestNewHostErrors(t *testing.T) {
	dir := t.TempDir()
	testutil.WriteFiles(t, dir, map[string]string{"bad.lua": "return {"})
	cfg := config.Defaults()
	cfg.Stages = []config.StageSpec{{Name: "x", Kind: config.StageLua, Script: dir + "/bad.lua"}}
	_, err := NewHost(cfg, discardLogger())
	wantErrContains(t, err, `lua stage "x"`, "bad.lua:1: syntax error")

	testutil.WriteFiles(t, dir, map[string]string{"notable.lua": "return 42"})
	cfg.Stages = []config.StageSpec{{Name: "x", Kind: config.StageLua, Script: dir + "/notable.lua"}}
	_, err = NewHost(cfg, discardLogger())
	wantErrContains(t, err, `lua stage "x": want a table of hook functions, got number`)

	testutil.WriteFiles(t, dir, map[string]string{"typo.lua": "return { on_rcp = function() end }"})
	cfg.Stages = []config.StageSpec{{Name: "x", Kind: config.StageLua, Script: dir + "/typo.lua"}}
	_, err = NewHost(cfg, discardLogger())
	wantErrContains(t, err, `unknown hook "on_rcp"`)

	cfg.Stages = []config.StageSpec{{Name: "x", Kind: config.StageLua, Script: dir + "/missing.lua"}}
	_, err = NewHost(cfg, discardLogger())
	wantErrContains(t, err, "missing.lua")
}

func TestStageErrors(t *testing.T) {
	_, h, _ := inline(t, `on_rcpt = function() end`)
	if _, err := h.Stage(config.StageSpec{Name: "b", Kind: config.StageBuiltin, Builtin: "relay"}); err == nil {
		t.Fatal("builtin spec accepted")
	}
	if _, err := h.Stage(config.StageSpec{Name: "other", Kind: config.StageInline}); err == nil {
		t.Fatal("unknown stage accepted")
	}
}

func TestHostWithoutLuaStages(t *testing.T) {
	h, err := NewHost(config.Defaults(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := h.Stats(); s.Created != 0 {
		t.Fatalf("states built without Lua stages: %+v", s)
	}
	h.Close()
}

// TestGoConfigWithoutSource builds a Config in Go, with File but no Source.
func TestGoConfigWithoutSource(t *testing.T) {
	dir := testutil.TempFiles(t, map[string]string{"pipeline.lua": `sluice.stage("s", { on_helo = function(conn, name)
  if name ~= conn.helo then return sluice.reject(550, "5.7.1", name) end
end })`})
	cfg := config.Defaults()
	cfg.File = dir + "/pipeline.lua"
	cfg.Stages = []config.StageSpec{{Name: "s", Kind: config.StageInline}}
	_, stages, _ := hostFor(t, cfg)
	v, err := stages["s"].(pipeline.HeloHook).OnHelo(bg, testConn(), "other.example")
	if err != nil || v.Action != pipeline.Reject || v.Text != "other.example" {
		t.Fatalf("%+v %v", v, err)
	}
}
