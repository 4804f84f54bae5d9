package luahost

import (
	"io"
	"slices"
	"strings"

	"github.com/emersion/go-message/textproto"
	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/pipeline"
)

// txn (on_mail, on_rcpt) and msg (on_message, on_route): views of a
// *pipeline.Txn and a *pipeline.Message. Their edit methods do not change
// the Go values: they record pipeline.Edits that the hook returns with its
// verdict, and the chain applies them after the hook returns (so the next
// stage sees them). Within the same call, get_meta, meta, tags and
// scratch, header, headers and size see the call's own edits. An edit the hook may not make
// (headers, metadata or tags at on_route) raises an error where it is
// made.
//
// Fields (read-only):
//
//	txn.id          message id
//	txn.sender      envelope sender ("" for the null sender <>)
//	txn.recipients  list of accepted recipient addresses (a copy)
//	txn.conn        the connection (see conn)
//	txn.auth        authentication results so far, method → result (see bind_auth.go)
//	msg.size        size in bytes of the header and body as they would be spooled now
//	txn.require_tls true when the message carries REQUIRETLS (RFC 8689):
//	                the client's MAIL parameter, the HTTP request's
//	                require_tls, or a set_require_tls edit (this call's own too)
//
// Methods (call with a colon):
//
//	txn:get_meta(k)      value or nil
//	txn:set_meta(k, v)   v a string, number or boolean; nil or "" deletes
//	txn:meta()           a copy of all metadata as a table
//	txn:tag(t)           add a tag (once)
//	txn:tags()           list of tags (a copy)
//	txn:scratch(k)       a per-transaction value left by an earlier stage, or nil
//	txn:set_scratch(k, v) set one (not persisted, not in events); nil or "" deletes
//	txn:add_auth_result(method, result [, prop ...])
//	                     an Authentication-Results entry, e.g. ("spf", "pass", "smtp.mailfrom=example.com")
//	msg:header(name)     first value of the field, or nil
//	msg:headers(name)    list of all values of the field, top first
//	msg:add_header(n, v) prepend a field (also txn:add_header at on_mail/on_rcpt:
//	                     applied when the message arrives, before on_message)
//	msg:set_header(n, v) remove every n field, then prepend one
//	msg:remove_header(n) remove every n field; returns how many there were
//	txn:set_require_tls(b) set (true) or clear (false) REQUIRETLS for the message:
//	                     it is then delivered only over validated TLS (docs/delivery.md)
//	msg:track{opens=, clicks=, unsubscribe=}
//	                     engagement tracking for this message (bind_track.go)
func (st *state) txnIndex(L *lua.LState) int {
	ud := L.CheckUserData(1)
	var txn *pipeline.Txn
	var msg *pipeline.Message
	switch v := ud.Value.(type) {
	case *pipeline.Txn:
		txn = v
	case *pipeline.Message:
		msg, txn = v, v.Txn
	default:
		st.stale(st.objName(ud))
	}
	key := L.CheckString(2)
	switch key {
	case "id":
		L.Push(lua.LString(txn.ID))
		return 1
	case "sender":
		L.Push(lua.LString(txn.Sender))
		return 1
	case "recipients":
		t := L.CreateTable(len(txn.Recipients), 0)
		for _, r := range txn.Recipients {
			t.Append(lua.LString(r.Address))
		}
		L.Push(t)
		return 1
	case "auth":
		L.Push(authTable(L, txn.AuthResults))
		return 1
	case "require_tls":
		v := txn.Params.RequireTLS
		if st.edits.RequireTLS != nil {
			v = *st.edits.RequireTLS
		}
		L.Push(lua.LBool(v))
		return 1
	case "conn":
		if txn.Conn == nil {
			L.Push(lua.LNil)
			return 1
		}
		if st.connUD == nil || st.connUD.Value != txn.Conn {
			st.connUD = st.object(txn.Conn, st.connMT)
		}
		L.Push(st.connUD)
		return 1
	}
	if fn := st.txnMethod(key); fn != nil {
		L.Push(fn)
		return 1
	}
	if msg != nil {
		if key == "size" {
			L.Push(lua.LNumber(messageSize(st.view(msg), msg.Body)))
			return 1
		}
		if fn := st.msgMethod(key); fn != nil {
			L.Push(fn)
			return 1
		}
	}
	st.sb.Raise("%s has no field %q", st.objName(ud), key)
	return 0
}

func (st *state) objName(ud *lua.LUserData) string {
	if ud.Metatable == st.msgMT {
		return "msg"
	}
	return "txn"
}

// methods are built once per state, on first use.
func (st *state) txnMethod(name string) *lua.LFunction {
	if st.txnMethods == nil {
		st.txnMethods = map[string]*lua.LFunction{
			"get_meta": st.L.NewFunction(st.getMeta),
			"set_meta": st.L.NewFunction(st.setMeta),
			"meta":     st.L.NewFunction(st.metaCopy),
			"tag":      st.L.NewFunction(st.tag),
			"tags":     st.L.NewFunction(st.tags),

			"add_header":    st.L.NewFunction(st.addHeader),
			"set_header":    st.L.NewFunction(st.setHeader),
			"remove_header": st.L.NewFunction(st.removeHeader),

			"scratch":         st.L.NewFunction(st.scratch),
			"set_scratch":     st.L.NewFunction(st.setScratch),
			"add_auth_result": st.L.NewFunction(st.addAuthResult),
			"track":           st.L.NewFunction(st.track),
			"set_require_tls": st.L.NewFunction(st.setRequireTLS),
		}
	}
	return st.txnMethods[name]
}

func (st *state) msgMethod(name string) *lua.LFunction {
	if st.msgMethods == nil {
		st.msgMethods = map[string]*lua.LFunction{
			"header":  st.L.NewFunction(st.header),
			"headers": st.L.NewFunction(st.headers),
		}
	}
	return st.msgMethods[name]
}

// self returns the txn behind a method's first argument.
func (st *state) self(L *lua.LState, method string) *pipeline.Txn {
	ud, ok := L.Get(1).(*lua.LUserData)
	if ok {
		switch v := ud.Value.(type) {
		case *pipeline.Txn:
			return v
		case *pipeline.Message:
			return v.Txn
		case nil:
			if ud.Metatable == st.txnMT || ud.Metatable == st.msgMT {
				st.stale(st.objName(ud))
			}
		}
	}
	st.sb.Raise("%s: call it as a method, with a colon: txn:%s(...)", method, method)
	return nil
}

func (st *state) selfMsg(L *lua.LState, method string) *pipeline.Message {
	if ud, ok := L.Get(1).(*lua.LUserData); ok {
		if m, ok := ud.Value.(*pipeline.Message); ok {
			return m
		}
		if ud.Value == nil && ud.Metatable == st.msgMT {
			st.stale("msg")
		}
	}
	st.sb.Raise("%s: call it as a method, with a colon: msg:%s(...)", method, method)
	return nil
}

func (st *state) keyArg(L *lua.LState, method string, n int) string {
	v := L.Get(n)
	s, ok := v.(lua.LString)
	if !ok || s == "" {
		st.sb.Raise("%s: argument %d must be a non-empty string, got %s", method, n-1, describeArg(v))
	}
	return string(s)
}

// lookup returns k from the call's pending edits, else from base.
func lookup(pending, base map[string]string, k string) (string, bool) {
	if v, ok := pending[k]; ok {
		return v, v != ""
	}
	v, ok := base[k]
	return v, ok
}

// overlay merges the call's pending edits over base (a copy).
func overlay(pending, base map[string]string) map[string]string {
	if len(pending) == 0 {
		return base
	}
	out := make(map[string]string, len(base)+len(pending))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range pending {
		if v == "" {
			delete(out, k)
		} else {
			out[k] = v
		}
	}
	return out
}

func (st *state) getMeta(L *lua.LState) int {
	t := st.self(L, "get_meta")
	k := st.keyArg(L, "get_meta", 2)
	if v, ok := lookup(st.edits.Meta, t.Meta, k); ok {
		L.Push(lua.LString(v))
	} else {
		L.Push(lua.LNil)
	}
	return 1
}

// valueArg is argument n as a string value: strings, numbers and booleans
// convert, nil is "" (delete).
func (st *state) valueArg(L *lua.LState, method string, n int) string {
	switch v := L.Get(n).(type) {
	case *lua.LNilType:
		return ""
	case lua.LString:
		if strings.ContainsAny(string(v), "\r\n\x00") {
			st.sb.Raise("%s: the value must not contain CR, LF or NUL", method)
		}
		return string(v)
	case lua.LNumber:
		return v.String()
	case lua.LBool:
		return v.String()
	default:
		st.sb.Raise("%s: the value must be a string, number, boolean or nil, got %s", method, describeArg(v))
	}
	return ""
}

func (st *state) setMeta(L *lua.LState) int {
	st.self(L, "set_meta")
	st.mayEdit("txn:set_meta", pipeline.EditMeta)
	k := st.keyArg(L, "set_meta", 2)
	st.edits.SetMeta(k, st.valueArg(L, "set_meta", 3))
	return 0
}

func (st *state) metaCopy(L *lua.LState) int {
	t := st.self(L, "meta")
	L.Push(stringMap(L, overlay(st.edits.Meta, t.Meta)))
	return 1
}

func (st *state) tag(L *lua.LState) int {
	st.self(L, "tag")
	st.mayEdit("txn:tag", pipeline.EditTags)
	tag := st.keyArg(L, "tag", 2)
	if strings.ContainsAny(tag, "\r\n\x00") {
		st.sb.Raise("tag: a tag must not contain CR, LF or NUL")
	}
	st.edits.AddTag(tag)
	return 0
}

func (st *state) tags(L *lua.LState) int {
	t := st.self(L, "tags")
	tags := t.Tags
	if len(st.edits.Tags) > 0 {
		tags = append([]string(nil), t.Tags...)
		for _, x := range st.edits.Tags {
			if !slices.Contains(tags, x) {
				tags = append(tags, x)
			}
		}
	}
	L.Push(stringList(L, tags))
	return 1
}

func (st *state) scratch(L *lua.LState) int {
	t := st.self(L, "scratch")
	k := st.keyArg(L, "scratch", 2)
	if v, ok := lookup(st.edits.Scratch, t.Scratch, k); ok {
		L.Push(lua.LString(v))
	} else {
		L.Push(lua.LNil)
	}
	return 1
}

func (st *state) setScratch(L *lua.LState) int {
	st.self(L, "set_scratch")
	st.mayEdit("txn:set_scratch", pipeline.EditScratch)
	k := st.keyArg(L, "set_scratch", 2)
	st.edits.SetScratch(k, st.valueArg(L, "set_scratch", 3))
	return 0
}

func (st *state) addAuthResult(L *lua.LState) int {
	st.self(L, "add_auth_result")
	st.mayEdit("txn:add_auth_result", pipeline.EditAuthResults)
	ar := pipeline.AuthResult{Method: st.keyArg(L, "add_auth_result", 2), Result: st.keyArg(L, "add_auth_result", 3)}
	for i := 4; i <= L.GetTop(); i++ {
		ar.Props = append(ar.Props, st.keyArg(L, "add_auth_result", i))
	}
	if err := ar.Validate(); err != nil {
		st.sb.Raise("add_auth_result: %s", err.Error())
	}
	st.edits.AuthResults = append(st.edits.AuthResults, ar)
	return 0
}

// view returns m's header with the current call's own header edits
// applied (a copy when there are any), so a script reads what it wrote.
func (st *state) view(m *pipeline.Message) *textproto.Header {
	if len(st.edits.Headers) == 0 {
		return &m.Header
	}
	h := m.Header.Copy()
	pipeline.ApplyHeaderEdits(&h, st.edits.Headers)
	return &h
}

func (st *state) header(L *lua.LState) int {
	m := st.selfMsg(L, "header")
	name := st.keyArg(L, "header", 2)
	h := st.view(m)
	if !h.Has(name) {
		L.Push(lua.LNil)
	} else {
		L.Push(lua.LString(st.capHeader(h.Get(name))))
	}
	return 1
}

// capHeader cuts a field value handed to Lua to lua_options.max_header
// bytes: a client controls header sizes, and the cost of string functions
// grows with their subject.
func (st *state) capHeader(v string) string {
	if st.maxHeader > 0 && len(v) > st.maxHeader {
		return v[:st.maxHeader]
	}
	return v
}

func (st *state) headers(L *lua.LState) int {
	m := st.selfMsg(L, "headers")
	name := st.keyArg(L, "headers", 2)
	vals := st.view(m).Values(name)
	copied := false
	for i, v := range vals {
		if c := st.capHeader(v); len(c) != len(v) {
			if !copied {
				vals, copied = append([]string(nil), vals...), true
			}
			vals[i] = c
		}
	}
	L.Push(stringList(L, vals))
	return 1
}

// fieldArgs checks a header field name and value: the name is printable
// US-ASCII without ':' (RFC 5322 field-name) of at most
// pipeline.MaxEditFieldName characters, the value has no CR, LF or
// NUL, at most pipeline.MaxEditFieldValue bytes and folds into lines of
// at most 998 characters (pipeline.CheckFold; it is folded when the edit
// is applied).
func (st *state) fieldArgs(L *lua.LState, method string) (string, string) {
	name := st.keyArg(L, method, 2)
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c >= 0x7f || c == ':' {
			st.sb.Raise("%s: invalid header field name %q", method, name)
		}
	}
	if len(name) > pipeline.MaxEditFieldName { // a field go-message cannot write
		st.sb.Raise("%s: header field name %.10s... too long: %d characters, at most %d", method, name, len(name), pipeline.MaxEditFieldName)
	}
	v := L.Get(3)
	var value string
	switch x := v.(type) {
	case lua.LString:
		value = string(x)
	case lua.LNumber:
		value = x.String()
	default:
		st.sb.Raise("%s: the value must be a string, got %s", method, describeArg(v))
	}
	if strings.ContainsAny(value, "\r\n\x00") {
		st.sb.Raise("%s: the value of %s must not contain CR, LF or NUL", method, name)
	}
	if len(value) > pipeline.MaxEditFieldValue {
		st.sb.Raise("%s: the value of %s is too long: %d bytes, at most %d", method, name, len(value), pipeline.MaxEditFieldValue)
	}
	if err := pipeline.CheckFold(name, value); err != nil {
		st.sb.Raise("%s: %s", method, err.Error())
	}
	return name, value
}

func (st *state) addHeader(L *lua.LState) int {
	st.self(L, "add_header")
	st.mayEdit("msg:add_header", pipeline.EditHeaders)
	name, value := st.fieldArgs(L, "add_header")
	st.edits.AddHeader(name, value)
	return 0
}

func (st *state) setHeader(L *lua.LState) int {
	st.self(L, "set_header")
	st.mayEdit("msg:set_header", pipeline.EditHeaders)
	name, value := st.fieldArgs(L, "set_header")
	st.edits.SetHeader(name, value)
	return 0
}

// removeHeader returns how many fields there were (0 before the message
// exists: on_mail, on_rcpt).
func (st *state) removeHeader(L *lua.LState) int {
	st.self(L, "remove_header")
	st.mayEdit("msg:remove_header", pipeline.EditHeaders)
	name := st.keyArg(L, "remove_header", 2)
	n := 0
	if ud, ok := L.Get(1).(*lua.LUserData); ok {
		if m, ok := ud.Value.(*pipeline.Message); ok {
			n = len(st.view(m).Values(name))
		}
	}
	st.edits.RemoveHeader(name)
	L.Push(lua.LNumber(n))
	return 1
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }

func messageSize(h *textproto.Header, body []byte) int64 {
	var c countWriter
	_ = textproto.WriteHeader(io.Writer(&c), *h)
	return int64(c) + int64(len(body))
}

func describeArg(v lua.LValue) string {
	switch v.(type) {
	case *lua.LNilType:
		return "nil"
	case *lua.LTable:
		return "a table"
	case *lua.LFunction:
		return "a function"
	}
	return v.Type().String()
}

// txn:set_require_tls(b) (also msg:): records a pipeline.Edits.RequireTLS,
// allowed where header edits are (not at on_route). b must be a boolean.
func (st *state) setRequireTLS(L *lua.LState) int {
	st.self(L, "set_require_tls")
	st.mayEdit("set_require_tls", pipeline.EditRequireTLS)
	v, ok := L.Get(2).(lua.LBool)
	if !ok {
		st.sb.Raise("set_require_tls: want a boolean, got %s", L.Get(2).Type())
	}
	b := bool(v)
	st.edits.RequireTLS = &b
	return 0
}
