package luahost

import (
	"strings"
	"testing"
)

// TestSetRequireTLS: txn.require_tls reads the message's REQUIRETLS flag
// (with the call's own edit), set_require_tls edits it; a non-boolean is
// an error, and the edit at on_route is refused when the configuration
// loads.
func TestSetRequireTLS(t *testing.T) {
	st, _, _ := inline(t, `on_message = function(msg)
    if msg.require_tls then error("already set") end
    msg:set_require_tls(true)
    if not msg.require_tls then error("own edit not seen") end
  end`)
	msg := testMsg(t)
	if _, err := messageApplied(st, msg); err != nil {
		t.Fatal(err)
	}
	if !msg.Params.RequireTLS {
		t.Fatal("RequireTLS not set")
	}
	st, _, _ = inline(t, `on_message = function(msg) msg:set_require_tls(false) end`)
	if _, err := messageApplied(st, msg); err != nil {
		t.Fatal(err)
	}
	if msg.Params.RequireTLS {
		t.Fatal("RequireTLS not cleared")
	}
	st, _, _ = inline(t, `on_message = function(msg) msg:set_require_tls("yes") end`)
	if _, err := messageApplied(st, msg); err == nil || !strings.Contains(err.Error(), "set_require_tls: want a boolean, got string") {
		t.Fatalf("err %v, want a type error", err)
	}
	err := newHostErr(t, "local sluice = require('sluice')\nsluice.stage('routing', {\n  on_route = function(msg, rcpt)\n    msg:set_require_tls(true)\n  end,\n})\n")
	wantErrContains(t, err, "pipeline.lua:4", "on_route calls set_require_tls; REQUIRETLS edits are not allowed in on_route")
}
