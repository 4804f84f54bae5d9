package luahost

import (
	"path/filepath"
	"testing"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// newHostErr loads a configuration and returns NewHost's error.
func newHostErr(t *testing.T, src string) error {
	t.Helper()
	dir := testutil.TempFiles(t, map[string]string{"pipeline.lua": src})
	cfg, err := config.Load(filepath.Join(dir, "pipeline.lua"))
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewHost(cfg, nil)
	if err == nil {
		h.Close()
	}
	return err
}

// TestRouteEditsRefusedAtLoad: an edit on_route may not make is refused
// when the configuration loads, naming the hook, the method and the line.
func TestRouteEditsRefusedAtLoad(t *testing.T) {
	for _, tt := range []struct{ call, want string }{
		{`msg:add_header("X-Route", "a")`, `on_route calls add_header; header edits are not allowed in on_route`},
		{`msg:set_header("X-Route", "a")`, `calls set_header`},
		{`msg:remove_header("X-Route")`, `calls remove_header`},
		{`msg:set_meta("k", "v")`, `on_route calls set_meta; metadata edits are not allowed in on_route`},
		{`msg:tag("t")`, `calls tag; tag edits`},
		{`if rcpt.domain == "x" then msg:add_header("A", "b") end`, `calls add_header`},
	} {
		t.Run(tt.call, func(t *testing.T) {
			err := newHostErr(t, "local sluice = require('sluice')\nsluice.stage('routing', {\n  on_route = function(msg, rcpt)\n    "+tt.call+"\n  end,\n})\n")
			wantErrContains(t, err, "pipeline.lua:4", `stage "routing"`, tt.want)
		})
	}
	// Reading and scratch values are fine in on_route, and so are a
	// script's own objects with method names like the edit methods.
	for _, ok := range []string{
		`msg:set_scratch('k', msg:header('Subject'))`,
		`local log = { tag = function(self, x) end, add_header = function(self) end }
    log:tag("x") log:add_header()`,
	} {
		if err := newHostErr(t, "local sluice = require('sluice')\nsluice.stage('r', {\n  on_route = function(msg, rcpt)\n    "+ok+"\n  end,\n})\n"); err != nil {
			t.Fatalf("%s: %v", ok, err)
		}
	}
}

// TestRouteEditRefusedAtRunTime: an edit reached through another function
// cannot be seen at load time; it fails the call with a clear error
// instead of being dropped.
func TestRouteEditRefusedAtRunTime(t *testing.T) {
	h, stages, _ := setup(t, map[string]string{"pipeline.lua": `local sluice = require('sluice')
local function stamp(m) m:add_header("X-Route", "a") end
sluice.stage('routing', {
  on_route = function(msg, rcpt)
    stamp(msg)
  end,
})`})
	_ = h
	st := stages["routing"]
	msg := testMsg(t)
	_, err := st.(pipeline.RouteHook).OnRoute(bg, msg, msg.Recipients[0])
	wantErrContains(t, err, "pipeline.lua:2", "msg:add_header is not allowed in on_route")
	if msg.Header.Has("X-Route") {
		t.Fatal("the refused header reached the message")
	}
}

// TestScratchAndAuthResults: scratch values pass from on_mail to later
// hooks; authentication results become one Authentication-Results field.
func TestScratchAndAuthResults(t *testing.T) {
	_, stages, _ := setup(t, map[string]string{"pipeline.lua": `local sluice = require('sluice')
sluice.stage('spf', {
  on_mail = function(txn, sender)
    txn:set_scratch("spf", "pass")
    assert(txn:scratch("spf") == "pass")
    txn:add_auth_result("spf", "pass", "smtp.mailfrom=example.com")
  end,
})
sluice.stage('dmarc', {
  on_message = function(msg)
    if msg:scratch("spf") == "pass" then
      msg:add_auth_result("dmarc", "pass", "header.from=example.com")
    end
  end,
})`})
	ch, err := pipeline.Compile([]pipeline.Stage{stages["spf"], stages["dmarc"]}, pipeline.ChainOptions{AuthServID: "mx.test"})
	if err != nil {
		t.Fatal(err)
	}
	txn := testTxn()
	if err := ch.Mail(bg, txn); err != nil {
		t.Fatal(err)
	}
	msg, err := pipeline.ParseMessage(txn, []byte("Subject: x\r\n\r\nbody\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ch.Message(bg, msg); err != nil {
		t.Fatal(err)
	}
	got := msg.Header.Values("Authentication-Results")
	want := "mx.test; spf=pass smtp.mailfrom=example.com; dmarc=pass header.from=example.com"
	if len(got) != 1 || got[0] != want {
		t.Fatalf("Authentication-Results %q, want [%q]", got, want)
	}
	if txn.Scratch["spf"] != "pass" {
		t.Fatalf("scratch %v", txn.Scratch)
	}
}
