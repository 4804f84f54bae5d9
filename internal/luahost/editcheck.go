package luahost

import (
	"fmt"

	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/pipeline"
)

// editMethods maps the txn/msg methods that record edits to their kind.
var editMethods = map[string]string{
	"add_header":      pipeline.EditHeaders,
	"set_header":      pipeline.EditHeaders,
	"remove_header":   pipeline.EditHeaders,
	"set_meta":        pipeline.EditMeta,
	"tag":             pipeline.EditTags,
	"add_auth_result": pipeline.EditAuthResults,
	"set_scratch":     pipeline.EditScratch,
	"track":           pipeline.EditTrack,
	"set_require_tls": pipeline.EditRequireTLS,
}

// checkEdits refuses, when the configuration loads, a hook function that
// calls an edit method its hook may not use (msg:add_header in on_route):
// the edit could never take effect, so the pipeline does not load. It
// sees method calls on the hook's first parameter (msg) written in the
// hook function itself; an edit reached any other way (through another
// function, a copy of msg, msg["add_header"](msg, ...)) is refused when it
// runs instead (state.mayEdit). Calls on other objects (a script's own
// log:tag(...)) are never mistaken for edits.
func checkEdits(stage, hook string, p *lua.FunctionProto) error {
	method, line := findEditCall(p, hook)
	if method == "" {
		return nil
	}
	e := &pipeline.EditError{Stage: stage, Hook: hook, Kind: editMethods[method]}
	return fmt.Errorf("%s:%d: stage %q: %s calls %s; %s edits are not allowed in %s (%s)",
		p.SourceName, line, stage, hook, method, e.Kind, hook, e.Allowed())
}

// findEditCall returns the first method call on register 0 (the first
// parameter: OP_SELF with B = 0 and a constant name) in p that hook may
// not make, with its line.
func findEditCall(p *lua.FunctionProto, hook string) (string, int) {
	const (
		bitRK = 1 << 8 // gopher-lua's RK constant flag (opBitRk)
	)
	for pc, inst := range p.Code {
		if int(inst>>26) != lua.OP_SELF {
			continue
		}
		if b := int(inst & 0x1ff); b != 0 || p.NumParameters == 0 {
			continue // not a call on the first parameter
		}
		c := int(inst>>9) & 0x1ff
		if c&bitRK == 0 {
			continue
		}
		k := c &^ bitRK
		if k >= len(p.Constants) {
			continue
		}
		name, ok := p.Constants[k].(lua.LString)
		if !ok {
			continue
		}
		kind, edit := editMethods[string(name)]
		if !edit || pipeline.Permitted(hook, kind) {
			continue
		}
		line := p.LineDefined
		if pc < len(p.DbgSourcePositions) {
			line = p.DbgSourcePositions[pc]
		}
		return string(name), line
	}
	return "", 0
}
