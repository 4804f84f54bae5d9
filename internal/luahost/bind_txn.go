package luahost

import (
	"io"
	"strings"

	"github.com/emersion/go-message/textproto"
	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/pipeline"
)

// txn (on_mail, on_rcpt) and msg (on_message, on_route): views of a
// *pipeline.Txn and a *pipeline.Message whose methods edit the Go values.
//
// Fields (read-only):
//
//	txn.id          message id
//	txn.sender      envelope sender ("" for the null sender <>)
//	txn.recipients  list of accepted recipient addresses (a copy)
//	txn.conn        the connection (see conn)
//	msg.size        size in bytes of the header and body as they would be spooled now
//
// Methods (call with a colon):
//
//	txn:get_meta(k)      value or nil
//	txn:set_meta(k, v)   v a string, number or boolean; nil or "" deletes
//	txn:meta()           a copy of all metadata as a table
//	txn:tag(t)           add a tag (once)
//	txn:tags()           list of tags (a copy)
//	msg:header(name)     first value of the field, or nil
//	msg:headers(name)    list of all values of the field, top first
//	msg:add_header(n, v) prepend a field
//	msg:set_header(n, v) remove every n field, then prepend one
//	msg:remove_header(n) remove every n field; returns how many
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
			L.Push(lua.LNumber(messageSize(msg)))
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
		}
	}
	return st.txnMethods[name]
}

func (st *state) msgMethod(name string) *lua.LFunction {
	if st.msgMethods == nil {
		st.msgMethods = map[string]*lua.LFunction{
			"header":        st.L.NewFunction(st.header),
			"headers":       st.L.NewFunction(st.headers),
			"add_header":    st.L.NewFunction(st.addHeader),
			"set_header":    st.L.NewFunction(st.setHeader),
			"remove_header": st.L.NewFunction(st.removeHeader),
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

func (st *state) getMeta(L *lua.LState) int {
	t := st.self(L, "get_meta")
	k := st.keyArg(L, "get_meta", 2)
	if v, ok := t.Meta[k]; ok {
		L.Push(lua.LString(v))
	} else {
		L.Push(lua.LNil)
	}
	return 1
}

func (st *state) setMeta(L *lua.LState) int {
	t := st.self(L, "set_meta")
	k := st.keyArg(L, "set_meta", 2)
	switch v := L.Get(3).(type) {
	case *lua.LNilType:
		t.SetMeta(k, "")
	case lua.LString:
		t.SetMeta(k, string(v))
	case lua.LNumber:
		t.SetMeta(k, v.String())
	case lua.LBool:
		t.SetMeta(k, v.String())
	default:
		st.sb.Raise("set_meta: the value must be a string, number, boolean or nil, got %s", describeArg(v))
	}
	return 0
}

func (st *state) metaCopy(L *lua.LState) int {
	t := st.self(L, "meta")
	L.Push(stringMap(L, t.Meta))
	return 1
}

func (st *state) tag(L *lua.LState) int {
	t := st.self(L, "tag")
	tag := st.keyArg(L, "tag", 2)
	if strings.ContainsAny(tag, "\r\n\x00") {
		st.sb.Raise("tag: a tag must not contain CR, LF or NUL")
	}
	t.AddTag(tag)
	return 0
}

func (st *state) tags(L *lua.LState) int {
	t := st.self(L, "tags")
	L.Push(stringList(L, t.Tags))
	return 1
}

func (st *state) header(L *lua.LState) int {
	m := st.selfMsg(L, "header")
	name := st.keyArg(L, "header", 2)
	if !m.Header.Has(name) {
		L.Push(lua.LNil)
	} else {
		L.Push(lua.LString(m.Header.Get(name)))
	}
	return 1
}

func (st *state) headers(L *lua.LState) int {
	m := st.selfMsg(L, "headers")
	name := st.keyArg(L, "headers", 2)
	L.Push(stringList(L, m.Header.Values(name)))
	return 1
}

// fieldArgs checks a header field name and value: the name is printable
// US-ASCII without ':' (RFC 5322 field-name), the value has no CR, LF or
// NUL (folding is done when the header is written).
func (st *state) fieldArgs(L *lua.LState, method string) (string, string) {
	name := st.keyArg(L, method, 2)
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c >= 0x7f || c == ':' {
			st.sb.Raise("%s: invalid header field name %q", method, name)
		}
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
	return name, value
}

func (st *state) addHeader(L *lua.LState) int {
	m := st.selfMsg(L, "add_header")
	name, value := st.fieldArgs(L, "add_header")
	m.Header.Add(name, value)
	return 0
}

func (st *state) setHeader(L *lua.LState) int {
	m := st.selfMsg(L, "set_header")
	name, value := st.fieldArgs(L, "set_header")
	m.Header.Del(name)
	m.Header.Add(name, value)
	return 0
}

func (st *state) removeHeader(L *lua.LState) int {
	m := st.selfMsg(L, "remove_header")
	name := st.keyArg(L, "remove_header", 2)
	n := len(m.Header.Values(name))
	m.Header.Del(name)
	L.Push(lua.LNumber(n))
	return 1
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }

func messageSize(m *pipeline.Message) int64 {
	var c countWriter
	_ = textproto.WriteHeader(io.Writer(&c), m.Header)
	return int64(c) + int64(len(m.Body))
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
