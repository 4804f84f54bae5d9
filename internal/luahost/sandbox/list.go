package sandbox

import (
	"fmt"

	lua "github.com/yuin/gopher-lua"
)

// List returns the options tables of the list under key ({ {...}, {...} }),
// each checked against keys, or nil when key is absent. Errors name the
// item: `key "webhooks[2].url"`.
func (o *Opts) List(key string, keys ...string) []*Opts {
	v := o.Get(key)
	if v == lua.LNil {
		return nil
	}
	t, ok := v.(*lua.LTable)
	if !ok {
		o.Fail(key, "want a list of tables, got %s", describe(v))
	}
	n, count := t.Len(), 0
	t.ForEach(func(lua.LValue, lua.LValue) { count++ })
	if count != n {
		o.Fail(key, "want a list of tables ({ {...}, {...} }), got a table with keys")
	}
	out := make([]*Opts, 0, n)
	for i := 1; i <= n; i++ {
		item, ok := t.RawGetInt(i).(*lua.LTable)
		if !ok {
			o.Fail(fmt.Sprintf("%s[%d]", key, i), "want a table, got %s", describe(t.RawGetInt(i)))
		}
		sub := &Opts{s: o.s, fn: o.fn, prefix: fmt.Sprintf("%s%s[%d].", o.prefix, key, i), T: item}
		sub.checkKeys(keys)
		out = append(out, sub)
	}
	return out
}
