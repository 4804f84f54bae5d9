package sandbox

import (
	"fmt"
	"sort"
	"strings"
	"unsafe"

	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/internal/luahost/sandbox/lpm"
)

// DefaultMaxString is the default Limits.MaxString (1 MiB).
const DefaultMaxString = 1 << 20

// MaxStringRep is the default bound on a string.rep result (kept for
// callers; the bound in force is Limits.MaxString).
const MaxStringRep = DefaultMaxString

// Limits bound what one call into a string or table builtin may cost.
//
// gopher-lua checks a call's deadline between Lua instructions only, so
// one long call into a Go builtin would run to its end whatever the
// deadline. The sandbox therefore replaces the builtins whose cost is not
// bounded by their arguments' sizes:
//
//   - string.find, string.match, string.gmatch and string.gsub use a copy
//     of gopher-lua's matcher (package lpm) that checks the call's context
//     every lpm.CheckEvery steps, so a pathological pattern stops at the
//     deadline. Their subject may be at most MaxString bytes. gsub builds
//     its result in one pass (upstream copied the whole string once per
//     replacement: quadratic) and fails once the result passes MaxString;
//     gmatch finds one match per iteration instead of all at once.
//   - string.rep, string.format and table.concat refuse results longer
//     than MaxString before building them; table.concat also checks the
//     context while it measures. string.format refuses widths and
//     precisions over two digits, as Lua does.
//   - table.sort checks the context every 4096 comparisons: a table kept
//     in a pooled state's globals can grow over many calls, and sorting
//     millions of values is one Go call.
//   - the concatenation operator (..) refuses results longer than
//     MaxString before building them. One OP_CONCAT is a single VM
//     instruction, so `s = s .. s` in a loop would otherwise build a string
//     of hundreds of MB between two deadline checks. This needs Sluice's
//     patched gopher-lua (internal/third_party/gopher-lua,
//     LState.SetMaxStringLen).
//
// Each refusal is a Lua error naming the limit.
type Limits struct {
	// MaxString is the longest string these builtins take as a pattern
	// subject or return (bytes); 0 means DefaultMaxString.
	MaxString int
}

func (l Limits) maxString() int {
	if l.MaxString <= 0 {
		return DefaultMaxString
	}
	return l.MaxString
}

// SetLimits sets the limits the string and table builtins and the
// concatenation operator apply from now on.
func (s *State) SetLimits(l Limits) {
	s.limits = l
	s.L.SetMaxStringLen(l.maxString(), "lua_options.max_string")
}

// Limits returns the limits in force.
func (s *State) Limits() Limits { return s.limits }

func (s *State) installLimited() {
	L := s.L
	if str, ok := L.GetGlobal("string").(*lua.LTable); ok {
		str.RawSetString("rep", L.NewFunction(s.strRep))
		str.RawSetString("find", L.NewFunction(s.strFind))
		str.RawSetString("match", L.NewFunction(s.strMatch))
		str.RawSetString("gmatch", L.NewFunction(s.strGmatch))
		str.RawSetString("gsub", L.NewFunction(s.strGsub))
		str.RawSetString("format", L.NewFunction(s.strFormat))
	}
	if tbl, ok := L.GetGlobal("table").(*lua.LTable); ok {
		tbl.RawSetString("concat", L.NewFunction(s.tableConcat))
		tbl.RawSetString("sort", L.NewFunction(s.tableSort))
	}
}

// checker returns an lpm checker that stops at the end of the call's
// context (none outside a call).
func (s *State) checker() *lpm.Checker {
	ctx := s.L.Context()
	if ctx == nil {
		return &lpm.Checker{}
	}
	return &lpm.Checker{Check: ctx.Err}
}

// tooLong raises the error for a string over the limit.
func (s *State) tooLong(fn, what string, n int) {
	s.L.RaiseError("%s: %s of %d bytes is over the limit of %d bytes (lua_options.max_string)", fn, what, n, s.limits.maxString())
}

// subject checks argument 1 of a pattern function.
func (s *State) subject(fn string) string {
	str := s.L.CheckString(1)
	if len(str) > s.limits.maxString() {
		s.tooLong(fn, "subject", len(str))
	}
	return str
}

// matchErr raises a matcher error; a stopped match names the deadline.
func (s *State) matchErr(fn string, err error) {
	if st, ok := err.(*lpm.Stopped); ok {
		s.L.RaiseError("%s: stopped at the call's deadline (%v)", fn, st.Err)
	}
	s.L.RaiseError("%s: %s", fn, err.Error())
}

func (s *State) compile(fn, pattern string) *lpm.Pattern {
	p, err := lpm.Compile(pattern)
	if err != nil {
		s.matchErr(fn, err)
	}
	return p
}

// pushCaptures pushes md's captures (or the whole match when whole and
// there are none) and returns how many it pushed.
func pushCaptures(L *lua.LState, str string, md *lpm.MatchData, whole bool) int {
	n := md.CaptureLength()
	if n == 2 {
		if !whole {
			return 0
		}
		L.Push(lua.LString(str[md.Capture(0):md.Capture(1)]))
		return 1
	}
	for i := 2; i < n; i += 2 {
		if md.IsPosCapture(i) {
			L.Push(lua.LNumber(md.Capture(i)))
		} else {
			L.Push(lua.LString(str[md.Capture(i):md.Capture(i+1)]))
		}
	}
	return n/2 - 1
}

// bytesOf returns str's bytes without copying; the matcher only reads them.
func bytesOf(str string) []byte { return unsafe.Slice(unsafe.StringData(str), len(str)) }

// strIndex converts a Lua string index (1-based, negative from the end)
// to a 0-based offset clamped to [0, len].
func strIndex(str string, i int) int {
	if i < 0 {
		i = len(str) + i + 1
	}
	i--
	if i < 0 {
		i = 0
	}
	if i > len(str) {
		i = len(str)
	}
	return i
}

func (s *State) strFind(L *lua.LState) int {
	str := s.subject("string.find")
	pattern := L.CheckString(2)
	init := strIndex(str, L.OptInt(3, 1))
	if L.GetTop() >= 4 && lua.LVAsBool(L.Get(4)) || pattern == "" {
		pos := strings.Index(str[init:], pattern)
		if pos < 0 {
			L.Push(lua.LNil)
			return 1
		}
		L.Push(lua.LNumber(init + pos + 1))
		L.Push(lua.LNumber(init + pos + len(pattern)))
		return 2
	}
	p := s.compile("string.find", pattern)
	md, err := p.Find(bytesOf(str), init, s.checker())
	if err != nil {
		s.matchErr("string.find", err)
	}
	if md == nil {
		L.Push(lua.LNil)
		return 1
	}
	L.Push(lua.LNumber(md.Capture(0) + 1))
	L.Push(lua.LNumber(md.Capture(1)))
	return 2 + pushCaptures(L, str, md, false)
}

func (s *State) strMatch(L *lua.LState) int {
	str := s.subject("string.match")
	pattern := L.CheckString(2)
	init := strIndex(str, L.OptInt(3, 1))
	p := s.compile("string.match", pattern)
	md, err := p.Find(bytesOf(str), init, s.checker())
	if err != nil {
		s.matchErr("string.match", err)
	}
	if md == nil {
		L.Push(lua.LNil)
		return 1
	}
	return pushCaptures(L, str, md, true)
}

// gmatchState is a lazy string.gmatch iterator: each call finds the next
// match, under the context of the call it runs in.
type gmatchState struct {
	str string
	p   *lpm.Pattern
	pos int
}

func (s *State) strGmatch(L *lua.LState) int {
	str := s.subject("string.gmatch")
	p := s.compile("string.gmatch", L.CheckString(2))
	g := &gmatchState{str: str, p: p}
	L.Push(L.NewFunction(func(L *lua.LState) int {
		if g.pos > len(g.str) {
			return 0
		}
		md, err := g.p.Find(bytesOf(g.str), g.pos, s.checker())
		if err != nil {
			s.matchErr("string.gmatch", err)
		}
		if md == nil {
			g.pos = len(g.str) + 1
			return 0
		}
		start, end := md.Capture(0), md.Capture(1)
		g.pos = start + 1
		if g.pos < end {
			g.pos = end
		}
		return pushCaptures(L, g.str, md, true)
	}))
	return 1
}

func (s *State) strGsub(L *lua.LState) int {
	const fn = "string.gsub"
	str := s.subject(fn)
	pattern := L.CheckString(2)
	L.CheckTypes(3, lua.LTString, lua.LTTable, lua.LTFunction)
	repl := L.Get(3)
	limit := L.OptInt(4, -1)
	p := s.compile(fn, pattern)
	max := s.limits.maxString()
	src := bytesOf(str)
	c := s.checker()
	var b strings.Builder
	last, n := 0, 0
	for sp := 0; sp <= len(src) && (limit < 0 || n < limit); {
		md, err := p.Find(src, sp, c)
		if err != nil {
			s.matchErr(fn, err)
		}
		if md == nil {
			break
		}
		start, end := md.Capture(0), md.Capture(1)
		n++
		b.WriteString(str[last:start])
		last = start
		if rs, keep := s.replacement(fn, str, md, repl); !keep {
			b.WriteString(rs)
			last = end
		}
		if b.Len() > max {
			s.tooLong(fn, "result", b.Len())
		}
		sp = start + 1
		if sp < end {
			sp = end
		}
		if p.Anchored() {
			break
		}
	}
	if n == 0 {
		L.Push(lua.LString(str))
		L.Push(lua.LNumber(0))
		return 2
	}
	b.WriteString(str[last:])
	if b.Len() > max {
		s.tooLong(fn, "result", b.Len())
	}
	L.Push(lua.LString(b.String()))
	L.Push(lua.LNumber(n))
	return 2
}

// replacement returns the text for one gsub match; keep is true when the
// match stays as it was (a table or function gave false or nil).
func (s *State) replacement(fn, str string, md *lpm.MatchData, repl lua.LValue) (string, bool) {
	L := s.L
	capture := func(i int) lua.LValue { // i: 0 = whole match, 1.. = captures
		if md.CaptureLength() == 2 && i <= 1 {
			return lua.LString(str[md.Capture(0):md.Capture(1)])
		}
		k := 2 * i
		if k >= md.CaptureLength() {
			L.RaiseError("%s: invalid capture index %%%d", fn, i)
		}
		if md.IsPosCapture(k) {
			return lua.LNumber(md.Capture(k))
		}
		return lua.LString(str[md.Capture(k):md.Capture(k+1)])
	}
	var v lua.LValue
	switch r := repl.(type) {
	case lua.LString:
		rs := string(r)
		if strings.IndexByte(rs, '%') < 0 {
			return rs, false
		}
		var b strings.Builder
		for i := 0; i < len(rs); i++ {
			c := rs[i]
			if c != '%' || i+1 == len(rs) {
				b.WriteByte(c)
				continue
			}
			i++
			d := rs[i]
			switch {
			case d == '0':
				b.WriteString(str[md.Capture(0):md.Capture(1)])
			case d >= '1' && d <= '9':
				b.WriteString(lua.LVAsString(capture(int(d - '0'))))
			default:
				b.WriteByte(d)
			}
			if b.Len() > s.limits.maxString() {
				s.tooLong(fn, "result", b.Len())
			}
		}
		return b.String(), false
	case *lua.LTable:
		if md.CaptureLength() > 2 {
			v = L.GetTable(r, capture(1))
		} else {
			v = L.GetTable(r, capture(0))
		}
	case *lua.LFunction:
		L.Push(r)
		nargs := 1
		if md.CaptureLength() > 2 {
			nargs = 0
			for i := 1; 2*i < md.CaptureLength(); i++ {
				L.Push(capture(i))
				nargs++
			}
		} else {
			L.Push(capture(0))
		}
		L.Call(nargs, 1)
		v = L.Get(-1)
		L.Pop(1)
	}
	if !lua.LVAsBool(v) {
		return "", true
	}
	if !lua.LVCanConvToString(v) {
		L.RaiseError("%s: invalid replacement value (a %s)", fn, v.Type().String())
	}
	return lua.LVAsString(v), false
}

func (s *State) strRep(L *lua.LState) int {
	str := L.CheckString(1)
	n := L.CheckInt(2)
	if n <= 0 || str == "" {
		L.Push(lua.LString(""))
		return 1
	}
	if max := s.limits.maxString(); len(str) > max/n {
		L.RaiseError("string.rep: result longer than %d bytes (lua_options.max_string)", max)
	}
	L.Push(lua.LString(strings.Repeat(str, n)))
	return 1
}

// strFormat is gopher-lua's string.format with Lua's bound on widths and
// precisions (two digits) and a bound on the result.
func (s *State) strFormat(L *lua.LState) int {
	str := L.CheckString(1)
	max := s.limits.maxString()
	size := len(str)
	top := L.GetTop()
	args := make([]any, top-1)
	for i := 2; i <= top; i++ {
		v := L.Get(i)
		args[i-2] = v
		if ls, ok := v.(lua.LString); ok {
			size += len(ls)
		} else {
			size += 32
		}
	}
	for i := 0; i < len(str); i++ {
		if str[i] != '%' {
			continue
		}
		i++
		if i < len(str) && str[i] == '%' {
			continue
		}
		for i < len(str) && strings.IndexByte("-+ #0", str[i]) >= 0 {
			i++
		}
		for _, part := range []string{"width", "precision"} {
			if part == "precision" {
				if i >= len(str) || str[i] != '.' {
					break
				}
				i++
			}
			d := 0
			for i < len(str) && str[i] >= '0' && str[i] <= '9' {
				i++
				d++
			}
			if d > 2 {
				L.RaiseError("string.format: invalid format (%s too long)", part)
			}
			size += 99
		}
	}
	if size > max {
		s.tooLong("string.format", "result", size)
	}
	npat := strings.Count(str, "%") - 2*strings.Count(str, "%%")
	if npat < 0 {
		npat = 0
	}
	if npat > len(args) {
		npat = len(args)
	}
	L.Push(lua.LString(fmt.Sprintf(str, args[:npat]...)))
	return 1
}

// tableConcat is table.concat with the result size measured (and the
// context checked) before anything is built.
func (s *State) tableConcat(L *lua.LState) int {
	const fn = "table.concat"
	tbl := L.CheckTable(1)
	sep := L.OptString(2, "")
	n := tbl.Len()
	i := L.OptInt(3, 1)
	j := L.OptInt(4, n)
	if L.GetTop() == 3 && (i > n || i < 1) {
		L.Push(lua.LString(""))
		return 1
	}
	if i < 1 {
		i = 1
	}
	if i > n {
		i = n
	}
	if j > n {
		j = n
	}
	if i > j {
		L.Push(lua.LString(""))
		return 1
	}
	max := s.limits.maxString()
	ctx := L.Context()
	size := 0
	for k := i; k <= j; k++ {
		v := tbl.RawGetInt(k)
		if !lua.LVCanConvToString(v) {
			L.RaiseError("%s: invalid value (%s) at index %d in table for concat", fn, v.Type().String(), k)
		}
		if ls, ok := v.(lua.LString); ok {
			size += len(ls)
		} else {
			size += len(lua.LVAsString(v))
		}
		if k != j {
			size += len(sep)
		}
		if size > max {
			s.tooLong(fn, "result", size)
		}
		if ctx != nil && k&0xfff == 0 {
			if err := ctx.Err(); err != nil {
				L.RaiseError("%s: stopped at the call's deadline (%v)", fn, err)
			}
		}
	}
	var b strings.Builder
	b.Grow(size)
	for k := i; k <= j; k++ {
		b.WriteString(lua.LVAsString(tbl.RawGetInt(k)))
		if k != j {
			b.WriteString(sep)
		}
	}
	L.Push(lua.LString(b.String()))
	return 1
}

// sorter sorts a copy of a table's list part for tableSort.
type sorter struct {
	L    *lua.LState
	fn   *lua.LFunction // nil: the < operator
	v    []lua.LValue
	n    int
	stop func() error // the call's ctx.Err, or nil
}

func (t *sorter) Len() int      { return len(t.v) }
func (t *sorter) Swap(i, j int) { t.v[i], t.v[j] = t.v[j], t.v[i] }
func (t *sorter) Less(i, j int) bool {
	t.n++
	if t.stop != nil && t.n&0xfff == 0 {
		if err := t.stop(); err != nil {
			// Unwinds out of sort.Sort; the table is left as it was.
			t.L.RaiseError("table.sort: stopped at the call's deadline (%v)", err)
		}
	}
	if t.fn == nil {
		return t.L.LessThan(t.v[i], t.v[j])
	}
	t.L.Push(t.fn)
	t.L.Push(t.v[i])
	t.L.Push(t.v[j])
	t.L.Call(2, 1)
	r := lua.LVAsBool(t.L.Get(-1))
	t.L.Pop(1)
	return r
}

// tableSort is table.sort that stops at the call's deadline. It sorts
// t[1..#t] (a copy, written back once sorted).
func (s *State) tableSort(L *lua.LState) int {
	tbl := L.CheckTable(1)
	srt := &sorter{L: L}
	if L.GetTop() >= 2 && L.Get(2) != lua.LNil {
		srt.fn = L.CheckFunction(2)
	}
	if ctx := L.Context(); ctx != nil {
		srt.stop = ctx.Err
	}
	n := tbl.Len()
	srt.v = make([]lua.LValue, n)
	for i := range srt.v {
		srt.v[i] = tbl.RawGetInt(i + 1)
	}
	sort.Sort(srt)
	for i, v := range srt.v {
		tbl.RawSetInt(i+1, v)
	}
	return 0
}
