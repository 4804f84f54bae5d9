package luahost

import (
	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/internal/luahost/sandbox"
	"github.com/sluice-mta/sluice/pipeline"
)

const numHooks = 8

// state is one pooled Lua state: the sandbox, each stage's hook functions
// and the metatables of the objects passed to hooks. It is used by one
// goroutine at a time.
type state struct {
	sb  *sandbox.State
	L   *lua.LState
	fns [][numHooks]*lua.LFunction // per stage index, per hook bit

	connMT, txnMT, msgMT, rcptMT, credsMT, eventMT *lua.LTable
	txnMethods, msgMethods                         map[string]*lua.LFunction

	// objects handed to Lua during the current call; their Value is set
	// to nil when the call returns, so a script that keeps one in a
	// global gets an error instead of touching a finished session.
	live   []*lua.LUserData
	connUD *lua.LUserData // txn.conn of the current call, made once

	// The current call's hook (hookRcpt ...) and the edits its script
	// asked for; Stage.call returns them with the verdict.
	hook  int
	edits pipeline.Edits
	stage string // the current call's stage name (metrics of sluice.ratelimit.check)

	maxHeader int // lua_options.max_header: longest header value handed to Lua

	ctx *callCtx // the context of this state's hook calls, armed per call
}

func newState(sb *sandbox.State, nstages int) *state {
	st := &state{sb: sb, L: sb.L, fns: make([][numHooks]*lua.LFunction, nstages), ctx: newCallCtx()}
	st.connMT = st.newMT("conn", st.connIndex)
	st.txnMT = st.newMT("txn", st.txnIndex)
	st.msgMT = st.newMT("msg", st.txnIndex)
	st.rcptMT = st.newMT("rcpt", st.rcptIndex)
	st.credsMT = st.newMT("creds", st.credsIndex)
	st.eventMT = st.L.NewTable()
	st.eventMT.RawSetString("__newindex", st.L.NewFunction(func(L *lua.LState) int {
		st.sb.Raise("ev is read-only")
		return 0
	}))
	st.eventMT.RawSetString("__metatable", lua.LString("sluice.event"))
	return st
}

func (st *state) newMT(name string, index lua.LGFunction) *lua.LTable {
	mt := st.L.NewTable()
	mt.RawSetString("__index", st.L.NewFunction(index))
	mt.RawSetString("__newindex", st.L.NewFunction(func(L *lua.LState) int {
		st.sb.Raise("%s.%s is read-only", name, L.Get(2).String())
		return 0
	}))
	mt.RawSetString("__tostring", st.L.NewFunction(func(L *lua.LState) int {
		L.Push(lua.LString(name))
		return 1
	}))
	mt.RawSetString("__metatable", lua.LString("sluice."+name))
	return mt
}

// object wraps a Go value for the current call.
func (st *state) object(v any, mt *lua.LTable) *lua.LUserData {
	ud := st.L.NewUserData()
	ud.Value = v
	ud.Metatable = mt
	st.live = append(st.live, ud)
	return ud
}

// endCall invalidates the objects of the call that just returned.
func (st *state) endCall() {
	for i, ud := range st.live {
		ud.Value = nil
		st.live[i] = nil
	}
	st.live = st.live[:0]
	st.connUD = nil
	st.edits = pipeline.Edits{}
}

// mayEdit raises a Lua error when the current hook may not make edits of
// kind: the edit is refused where it is made, with the script's line.
func (st *state) mayEdit(method, kind string) {
	hook := sandbox.Hooks[st.hook]
	if !pipeline.Permitted(hook, kind) {
		st.sb.Raise("%s is not allowed in %s: %s", method, hook, (&pipeline.EditError{Kind: kind}).Allowed())
	}
}

func (st *state) close() {
	st.ctx.stop()
	st.sb.Close()
}

// stale raises the error for an object used after its hook returned.
func (st *state) stale(what string) {
	st.sb.Raise("%s is no longer valid: it belongs to a hook call that has returned (keep values, not objects, between calls)", what)
}
