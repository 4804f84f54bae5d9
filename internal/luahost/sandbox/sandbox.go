// Package sandbox builds the sandboxed gopher-lua states that Sluice runs
// Lua in, both when it evaluates the configuration file (internal/config)
// and when it runs Lua stages (internal/luahost), and the part of the
// `sluice` Lua module that is the same in both: verdicts, routes and
// logging.
//
// It is a leaf package (it imports only pipeline and gopher-lua) so that
// internal/config can evaluate the configuration in the same sandbox that
// internal/luahost, which imports internal/config, uses at run time.
//
// A sandboxed state opens only the base, table, string and math libraries.
// It has no os, io, debug, package or coroutine library, and dofile,
// loadfile, load, loadstring, module, collectgarbage and newproxy are
// removed. require is replaced by a function that returns the `sluice`
// module for "sluice" and fails for every other name. print goes to slog.
// The string and table builtins whose cost is not bounded by their
// arguments (pattern matching, string.rep, string.format, table.concat,
// table.sort) are replaced by versions that stop at the call's deadline and
// refuse strings over Limits.MaxString (strlib.go); the .. operator refuses
// them too, through Sluice's patched gopher-lua
// (internal/third_party/gopher-lua, LState.SetMaxStringLen). print cuts its
// line at MaxString; sluice.log refuses huge fields tables.
//
// The sandbox protects the host from accidents and keeps scripts away from
// files, processes and the network. It bounds each step of a call (one
// instruction or one builtin call), not a script's total memory: a loop
// that keeps what it builds is stopped only by the deadline. Lua code is
// trusted operator code, not untrusted user input.
//
// A State is not safe for concurrent use; internal/luahost pools them.
package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"

	lua "github.com/yuin/gopher-lua"
	"github.com/yuin/gopher-lua/parse"
)

// State is one sandboxed Lua state with the `sluice` module installed.
type State struct {
	L *lua.LState
	// Module is the `sluice` module table (also the global `sluice`).
	// Callers add their own functions to it (internal/config adds the
	// configuration functions).
	Module *lua.LTable

	log      *slog.Logger
	acceptUD *lua.LUserData
	quiet    bool
	record   bool
	err      error
	limits   Limits
}

// New returns a sandboxed state whose print and sluice.log output go to
// log (nil means slog.Default()).
func New(log *slog.Logger) *State {
	if log == nil {
		log = slog.Default()
	}
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	s := &State{L: L, log: log}
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.StringLibName, lua.OpenString},
		{lua.MathLibName, lua.OpenMath},
	} {
		L.Push(L.NewFunction(lib.open))
		L.Push(lua.LString(lib.name))
		L.Call(1, 0)
	}
	for _, name := range []string{
		"dofile", "loadfile", "load", "loadstring", "module", "require",
		"collectgarbage", "newproxy", "_printregs",
	} {
		L.SetGlobal(name, lua.LNil)
	}
	s.installLimited()
	s.SetLimits(Limits{})
	L.SetGlobal("print", L.NewFunction(s.print))
	s.Module = s.newModule()
	L.SetGlobal("sluice", s.Module)
	L.SetGlobal("require", L.NewFunction(s.require))
	return s
}

// Close releases the state.
func (s *State) Close() { s.L.Close() }

// SetLogger sets the logger that print and sluice.log write to from now on.
// luahost sets it to the current stage's logger before each call.
func (s *State) SetLogger(l *slog.Logger) {
	if l != nil {
		s.log = l
	}
}

// Logger returns the current logger.
func (s *State) Logger() *slog.Logger { return s.log }

// SetQuiet drops print and sluice.log output while on (luahost turns it on
// while it replays the configuration program in a new pooled state, so the
// program's top-level logging appears once, at load, not once per state).
func (s *State) SetQuiet(on bool) { s.quiet = on }

// RecordErrors makes Raise remember the first error it raises, so that an
// error swallowed by a pcall in the configuration still fails the load.
func (s *State) RecordErrors(on bool) { s.record = on }

// Err returns the first error raised while RecordErrors was on.
func (s *State) Err() error { return s.err }

// Where returns "source:line:" of the innermost Lua function on the call
// stack (skipping Go functions), or "" when there is none.
func (s *State) Where() string {
	for lvl := 0; ; lvl++ {
		w := s.L.Where(lvl)
		if w == "" {
			return ""
		}
		if !strings.HasPrefix(w, "[G]") {
			return w
		}
	}
}

// Line returns the current line of the innermost Lua function, or 0.
func (s *State) Line() int {
	w := strings.TrimSuffix(s.Where(), ":")
	i := strings.LastIndexByte(w, ':')
	if i < 0 {
		return 0
	}
	n, _ := strconv.Atoi(w[i+1:])
	return n
}

// Raise raises a Lua error whose message starts with the calling Lua
// code's "file:line:". It does not return.
func (s *State) Raise(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if w := s.Where(); w != "" {
		msg = w + " " + msg
	}
	if s.record && s.err == nil {
		s.err = errors.New(msg)
	}
	s.L.Error(lua.LString(msg), 0)
}

func (s *State) require(L *lua.LState) int {
	name := L.CheckString(1)
	if name == "sluice" {
		L.Push(s.Module)
		return 1
	}
	s.Raise("require: module %q is not available in the sandbox (only \"sluice\" is)", name)
	return 0
}

func (s *State) print(L *lua.LState) int {
	if s.quiet {
		return 0
	}
	// The line is cut at MaxString bytes: print(unpack(t)) of a few
	// thousand 1 MiB strings would otherwise build gigabytes in one call.
	limit := s.limits.maxString()
	var b strings.Builder
	cut := false
	for i := 1; i <= L.GetTop() && !cut; i++ {
		if i > 1 {
			b.WriteByte('\t')
		}
		str := L.ToStringMeta(L.Get(i)).String()
		if room := limit - b.Len(); len(str) > room {
			str, cut = str[:max(room, 0)], true
		}
		b.WriteString(str)
	}
	attrs := []any{"where", strings.TrimSuffix(s.Where(), ":")}
	if cut {
		attrs = append(attrs, "truncated_at", limit)
	}
	s.log.Info(b.String(), attrs...)
	return 0
}

// Compile parses and compiles Lua source once; name is the chunk name used
// in error messages and tracebacks ("pipeline.lua:12: ..."). A syntax error
// is returned as "name:line: syntax error: ...".
func Compile(name string, src []byte) (*lua.FunctionProto, error) {
	chunk, err := parse.Parse(bytes.NewReader(src), name)
	if err != nil {
		var pe *parse.Error
		if errors.As(err, &pe) {
			line := pe.Pos.Line
			if line == parse.EOF || line <= 0 {
				line = bytes.Count(src, []byte("\n")) + 1
				return nil, fmt.Errorf("%s:%d: syntax error at end of file (%s)", name, line, pe.Message)
			}
			if pe.Message == "syntax error" {
				return nil, fmt.Errorf("%s:%d: syntax error near %q", name, line, pe.Token)
			}
			return nil, fmt.Errorf("%s:%d: syntax error near %q: %s", name, line, pe.Token, pe.Message)
		}
		return nil, fmt.Errorf("%s: syntax error: %v", name, err)
	}
	if chunk == nil {
		return nil, fmt.Errorf("%s: syntax error", name)
	}
	proto, err := lua.Compile(chunk, name)
	if err != nil {
		var ce *lua.CompileError
		if errors.As(err, &ce) {
			return nil, fmt.Errorf("%s:%d: %s", name, ce.Line, ce.Message)
		}
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	return proto, nil
}

// CompileFile reads and compiles a Lua file; the chunk name is path.
func CompileFile(path string) (*lua.FunctionProto, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Compile(path, src)
}

// Call calls fn with args under ctx (L.SetContext; the context is removed
// afterwards), in protected mode, and returns its first nret results
// (nret >= 0). A Lua error comes back as *ScriptError; when ctx ended
// during the call the error wraps ctx.Err() (context.DeadlineExceeded or
// context.Canceled). After an error the state should be closed, not
// reused.
func (s *State) Call(ctx context.Context, fn *lua.LFunction, nret int, args ...lua.LValue) ([]lua.LValue, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	L := s.L
	top := L.GetTop()
	L.SetContext(ctx)
	L.Push(fn)
	for _, a := range args {
		L.Push(a)
	}
	err := L.PCall(len(args), nret, nil)
	L.RemoveContext()
	if err == nil && ctx.Err() != nil {
		// It returned, but after its deadline: a call that overran is a
		// failure, never a success.
		err = ctx.Err()
	}
	if err != nil {
		L.SetTop(top)
		return nil, Wrap(ctx, err)
	}
	out := make([]lua.LValue, nret)
	for i := 0; i < nret; i++ {
		out[i] = L.Get(top + 1 + i)
	}
	L.SetTop(top)
	return out, nil
}

// Run instantiates proto in the state's global environment (or in env,
// when env is not nil) and runs it, returning its first result.
func (s *State) Run(ctx context.Context, proto *lua.FunctionProto, env *lua.LTable) (lua.LValue, error) {
	fn := s.L.NewFunctionFromProto(proto)
	if env != nil {
		fn.Env = env
	}
	out, err := s.Call(ctx, fn, 1)
	if err != nil {
		return nil, err
	}
	return out[0], nil
}

// ScriptError is a Lua error: a runtime error in a script, an error()
// call, or a failed check in a sluice function.
type ScriptError struct {
	// Message is the Lua error message, normally "file:line: text".
	Message string
	// Traceback is the Lua stack traceback, for debug logs.
	Traceback string
	// Cause is context.DeadlineExceeded or context.Canceled when the call
	// was stopped by its context, else nil.
	Cause error
}

func (e *ScriptError) Error() string {
	if e.Cause != nil && !strings.Contains(e.Message, e.Cause.Error()) {
		return e.Message + ": " + e.Cause.Error()
	}
	return e.Message
}

func (e *ScriptError) Unwrap() error { return e.Cause }

// Where returns the "file:line" prefix of the message, or "".
func (e *ScriptError) Where() string {
	where, _ := SplitWhere(e.Message)
	return where
}

// SplitWhere splits "file:line: text" into "file:line" and "text". When
// msg has no such prefix, where is "".
func SplitWhere(msg string) (where, text string) {
	i := strings.Index(msg, ": ")
	for i > 0 {
		head := msg[:i]
		if j := strings.LastIndexByte(head, ':'); j > 0 {
			if _, err := strconv.Atoi(head[j+1:]); err == nil {
				return head, msg[i+2:]
			}
		}
		k := strings.Index(msg[i+2:], ": ")
		if k < 0 {
			break
		}
		i += 2 + k
	}
	return "", msg
}

// Wrap converts an error from PCall into a *ScriptError, attaching
// ctx.Err() when the context ended.
func Wrap(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	se := &ScriptError{Message: err.Error(), Cause: ctx.Err()}
	var ae *lua.ApiError
	if errors.As(err, &ae) {
		if ae.Object != nil {
			se.Message = ae.Object.String()
		}
		se.Traceback = ae.StackTrace
		if ae.Cause != nil && se.Cause == nil {
			se.Cause = ae.Cause
		}
	}
	return se
}
