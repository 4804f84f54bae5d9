package sandbox

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"
)

func run(t *testing.T, s *State, src string) (lua.LValue, error) {
	t.Helper()
	proto, err := Compile("t.lua", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return s.Run(context.Background(), proto, nil)
}

func TestSplitWhere(t *testing.T) {
	for _, tt := range []struct{ in, where, text string }{
		{"p.lua:12: boom", "p.lua:12", "boom"},
		{"/tmp/a b/p.lua:3: x: y", "/tmp/a b/p.lua:3", "x: y"},
		{"C:/x/p.lua:7: z", "C:/x/p.lua:7", "z"},
		{"no position", "", "no position"},
		{"a: b: c", "", "a: b: c"},
		{"context deadline exceeded", "", "context deadline exceeded"},
	} {
		w, txt := SplitWhere(tt.in)
		if w != tt.where || txt != tt.text {
			t.Errorf("SplitWhere(%q) = %q, %q", tt.in, w, txt)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	for _, tt := range []struct{ src, want string }{
		{"x = = 1", `f.lua:1: syntax error near "="`},
		{"\n\nlocal function", `f.lua:3: syntax error`},
		{"for i = 1 do end", `f.lua:1: syntax error`},
		{"return 'unfinished", `f.lua:1:`},
		{"goto x", `no visible label 'x' for <goto> at line 1`},
	} {
		_, err := Compile("f.lua", []byte(tt.src))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Compile(%q) = %v, want %q", tt.src, err, tt.want)
		}
	}
	if _, err := CompileFile("/nonexistent/x.lua"); err == nil {
		t.Error("CompileFile of a missing file succeeded")
	}
}

func TestCallDeadline(t *testing.T) {
	s := New(nil)
	defer s.Close()
	proto, _ := Compile("loop.lua", []byte("while true do end"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := s.Run(ctx, proto, nil)
	var se *ScriptError
	if !errors.As(err, &se) || !errors.Is(err, context.DeadlineExceeded) || se.Where() != "loop.lua:1" {
		t.Fatalf("err = %#v", err)
	}
	// A done context fails before running anything.
	if _, err := New(nil).Run(ctx, proto, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
}

func TestRunEnvAndResult(t *testing.T) {
	s := New(nil)
	defer s.Close()
	env := s.L.NewTable()
	mt := s.L.NewTable()
	mt.RawSetString("__index", s.L.Get(lua.GlobalsIndex))
	s.L.SetMetatable(env, mt)
	proto, _ := Compile("e.lua", []byte("g = 1; return string.upper('x')"))
	v, err := s.Run(context.Background(), proto, env)
	if err != nil || v.String() != "X" {
		t.Fatalf("%v %v", v, err)
	}
	if env.RawGetString("g") != lua.LNumber(1) || s.L.GetGlobal("g") != lua.LNil {
		t.Fatal("env not used for globals")
	}
}

func TestPrintAndQuiet(t *testing.T) {
	var buf bytes.Buffer
	s := New(slog.New(slog.NewTextHandler(&buf, nil)))
	defer s.Close()
	if _, err := run(t, s, `print("a", 1, nil, true)`); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), `msg="a\t1\tnil\ttrue" where=t.lua:1`) {
		t.Fatalf("log %q", buf.String())
	}
	buf.Reset()
	s.SetQuiet(true)
	if _, err := run(t, s, `print("hidden") sluice.log.warn("hidden")`); err != nil {
		t.Fatal(err)
	}
	if buf.Len() != 0 {
		t.Fatalf("quiet state logged %q", buf.String())
	}
}

func TestRecordErrors(t *testing.T) {
	s := New(nil)
	defer s.Close()
	s.RecordErrors(true)
	if _, err := run(t, s, `pcall(sluice.route.relay, { hots = "x" })`); err != nil {
		t.Fatal(err)
	}
	if err := s.Err(); err == nil || err.Error() != `t.lua:1: sluice.route.relay: unknown key "hots"` {
		t.Fatalf("recorded %v", err)
	}
}

func TestStringRep(t *testing.T) {
	s := New(nil)
	defer s.Close()
	v, err := run(t, s, `return string.rep("ab", 3) .. string.rep("x", 0) .. string.rep("", 1e9) .. ("c"):rep(2)`)
	if err != nil || v.String() != "abababcc" {
		t.Fatalf("%v %v", v, err)
	}
	_, err = run(t, s, `return string.rep("ab", 600000)`)
	if err == nil || !strings.Contains(err.Error(), "string.rep: result longer than 1048576 bytes") {
		t.Fatalf("err = %v", err)
	}
}

func TestToGo(t *testing.T) {
	s := New(nil)
	defer s.Close()
	v, err := run(t, s, `return { s = "x", i = 3, f = 0.25, neg = -2, b = false, l = { 1, "two" }, m = { k = { "v" } }, e = {} }`)
	if err != nil {
		t.Fatal(err)
	}
	g, err := ToGo(v)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"s": "x", "i": int64(3), "f": 0.25, "neg": int64(-2), "b": false,
		"l": []any{int64(1), "two"}, "m": map[string]any{"k": []any{"v"}}, "e": []any{}}
	if !reflect.DeepEqual(g, want) {
		t.Fatalf("got %#v", g)
	}
	for _, tt := range []struct{ src, want string }{
		{`return { f = print }`, `key "f": a function cannot be used`},
		{`return { 1, 2, x = 3 }`, "not a mix of both"},
		{`return { [1] = 1, [3] = 3 }`, "not a mix of both"},
		{`return { [true] = 1 }`, "not a mix of both"},
		{`return { a = { b = { c = sluice.accept() } } }`, `key "a.b.c": a userdata cannot be used`},
		{`local t = {} t.t = t return t`, "nested too deeply"},
	} {
		v, err := run(t, s, tt.src)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ToGo(v); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ToGo(%s) = %v, want %q", tt.src, err, tt.want)
		}
	}
}

func TestHookNames(t *testing.T) {
	s := New(nil)
	defer s.Close()
	v, _ := run(t, s, `return { on_event = print, on_connect = print, _x = 1, _y = print }`)
	got, err := HookNames(v.(*lua.LTable))
	if err != nil || !reflect.DeepEqual(got, []string{"on_connect", "on_event"}) {
		t.Fatalf("%v %v", got, err)
	}
	if HookIndex("on_route") != 6 || HookIndex("on_x") != -1 {
		t.Fatal("HookIndex")
	}
}

// TestTableSort: the deadline-checking table.sort sorts like Lua's, with
// and without a comparator, and fails on values < cannot compare.
func TestTableSort(t *testing.T) {
	s := New(nil)
	defer s.Close()
	v, err := run(t, s, `local t = {5, 3, 9, 1, 7, 3}
table.sort(t)
local u = {"pear", "apple", "fig"}
table.sort(u, function(a, b) return a > b end)
local e = {}
table.sort(e)
return table.concat(t, ",") .. ";" .. table.concat(u, ",") .. ";" .. #e`)
	if err != nil {
		t.Fatal(err)
	}
	if got := v.String(); got != "1,3,3,5,7,9;pear,fig,apple;0" {
		t.Fatalf("got %q", got)
	}
	if _, err := run(t, s, `table.sort({1, "a", 2})`); err == nil || !strings.Contains(err.Error(), "attempt to compare") {
		t.Fatalf("mixed sort: err = %v, want an attempt to compare error", err)
	}
}

// TestPrintAndLogBounded: print cuts its line at MaxString and says so;
// sluice.log refuses a fields table over 1000 values or MaxString bytes
// and takes a small one.
func TestPrintAndLogBounded(t *testing.T) {
	var buf bytes.Buffer
	s := New(slog.New(slog.NewTextHandler(&buf, nil)))
	defer s.Close()
	s.SetLimits(Limits{MaxString: 100})
	if _, err := run(t, s, `print(string.rep("a", 60), string.rep("b", 60))`); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	// 60 a, a tab, then 39 of the 60 b: 100 bytes.
	if !strings.Contains(out, "truncated_at=100") || !strings.Contains(out, strings.Repeat("b", 39)) || strings.Contains(out, strings.Repeat("b", 40)) {
		t.Fatalf("print output %q: want the line cut at 100 bytes", out)
	}
	if _, err := run(t, s, `sluice.log.info("ok", { n = 1, list = {1, 2, 3} })`); err != nil {
		t.Fatal(err)
	}
	for _, src := range []string{
		`local t = {} for i = 1, 1001 do t[i] = i end sluice.log.info("x", { t = t })`,
		`sluice.log.info("x", { a = string.rep("z", 60), b = string.rep("z", 60) })`,
	} {
		if _, err := run(t, s, src); err == nil || !strings.Contains(err.Error(), "sluice.log: fields too large") {
			t.Fatalf("%s: err = %v, want fields too large", src, err)
		}
	}
}

// TestRoutePool: sluice.route.mx and relay take an egress pool, readable
// as route.pool; a pool name with a space is refused.
func TestRoutePool(t *testing.T) {
	s := New(nil)
	defer s.Close()
	v, err := run(t, s, `return sluice.route.mx { pool = "bulk" }`)
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := ToRoute(v); !ok || r.Pool != "bulk" || r.Kind != "mx" {
		t.Fatalf("route %v", v)
	}
	v, err = run(t, s, `return sluice.route.relay { host = "smart.example", pool = "A" }.pool`)
	if err != nil || v.String() != "A" {
		t.Fatalf("relay pool %v %v", v, err)
	}
	if _, err := run(t, s, `return sluice.route.mx { pool = "a b" }`); err == nil || !strings.Contains(err.Error(), "pool") {
		t.Fatalf("bad pool: %v", err)
	}
}
