package luahost

import (
	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/pipeline"
)

// eventTable builds the read-only table on_event receives. Its fields are
// the event's JSON fields (schema 1): schema, event_id, type, time (RFC
// 3339 string, UTC, milliseconds), message_id, recipient, sender, source,
// tenant, queue, attempt, response ({code, enhanced, text} or nil), remote
// ({host, ip, tls} or nil), bounce_class, tags (list), metadata (table),
// size, node. Assigning a field raises an error; pairs(ev) sees nothing
// (ev is a proxy), iterate ev.tags or ev.metadata instead.
func (st *state) eventTable(ev *pipeline.Event) lua.LValue {
	L := st.L
	d := L.CreateTable(0, 18)
	d.RawSetString("schema", lua.LNumber(ev.Schema))
	d.RawSetString("event_id", lua.LString(ev.EventID))
	d.RawSetString("type", lua.LString(ev.Type))
	d.RawSetString("time", lua.LString(ev.Time.UTC().Format("2006-01-02T15:04:05.000Z07:00")))
	d.RawSetString("message_id", lua.LString(ev.MessageID))
	d.RawSetString("recipient", lua.LString(ev.Recipient))
	d.RawSetString("sender", lua.LString(ev.Sender))
	d.RawSetString("source", lua.LString(ev.Source))
	d.RawSetString("tenant", lua.LString(ev.Tenant))
	d.RawSetString("queue", lua.LString(ev.Queue))
	d.RawSetString("attempt", lua.LNumber(ev.Attempt))
	if r := ev.Response; r != nil {
		t := L.CreateTable(0, 3)
		t.RawSetString("code", lua.LNumber(r.Code))
		t.RawSetString("enhanced", lua.LString(r.Enhanced))
		t.RawSetString("text", lua.LString(r.Text))
		d.RawSetString("response", t)
	}
	if r := ev.Remote; r != nil {
		t := L.CreateTable(0, 3)
		t.RawSetString("host", lua.LString(r.Host))
		t.RawSetString("ip", lua.LString(r.IP))
		t.RawSetString("tls", lua.LString(r.TLS))
		d.RawSetString("remote", t)
	}
	d.RawSetString("bounce_class", lua.LString(ev.BounceClass))
	d.RawSetString("tags", stringList(L, ev.Tags))
	d.RawSetString("metadata", stringMap(L, ev.Metadata))
	d.RawSetString("size", lua.LNumber(ev.Size))
	d.RawSetString("node", lua.LString(ev.Node))

	proxy := L.NewTable()
	mt := L.CreateTable(0, 3)
	mt.RawSetString("__index", d)
	mt.RawSetString("__newindex", st.eventMT.RawGetString("__newindex"))
	mt.RawSetString("__metatable", st.eventMT.RawGetString("__metatable"))
	proxy.Metatable = mt
	return proxy
}

func stringMap(L *lua.LState, m map[string]string) *lua.LTable {
	t := L.CreateTable(0, len(m))
	for k, v := range m {
		t.RawSetString(k, lua.LString(v))
	}
	return t
}
