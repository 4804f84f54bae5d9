package luahost

import (
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

// TestTrack: msg:track records a tracking edit per key; false opts out,
// an absent key leaves what came before; the last call wins.
func TestTrack(t *testing.T) {
	st, _, _ := inline(t, `on_message = function(msg)
    msg:track { opens = true, clicks = true }
    msg:track { clicks = false }
  end`)
	msg := testMsg(t)
	yes := true
	msg.Track = &pipeline.Track{Unsubscribe: &yes} // as the HTTP request would
	if _, err := messageApplied(st, msg); err != nil {
		t.Fatal(err)
	}
	o, c, u := msg.Track.Resolve(false, true, false)
	if !o || c || !u {
		t.Fatalf("opens %v clicks %v unsubscribe %v, want true false true (track %+v)", o, c, u, msg.Track)
	}
}

// TestTrackRefused: a bad key is an error naming it; msg:track at
// on_route is refused when the configuration loads.
func TestTrackRefused(t *testing.T) {
	st, _, _ := inline(t, `on_message = function(msg) msg:track { open = true } end`)
	_, err := messageApplied(st, testMsg(t))
	if err == nil || !strings.Contains(err.Error(), `"open"`) {
		t.Fatalf("err %v, want an unknown key error naming open", err)
	}
	// txn:track in on_rcpt: the error names the call as written.
	st, _, _ = inline(t, `on_rcpt = function(txn, rcpt) txn:track { click = true } end`)
	_, err = rcptHook(t, st).OnRcpt(bg, testTxn(), rcpt(t, "a@example.org"))
	if err == nil || !strings.Contains(err.Error(), `txn:track: unknown key "click"`) {
		t.Fatalf("err %v, want txn:track naming click", err)
	}
	err = newHostErr(t, "local sluice = require('sluice')\nsluice.stage('routing', {\n  on_route = function(msg, rcpt)\n    msg:track { opens = true }\n  end,\n})\n")
	wantErrContains(t, err, "pipeline.lua:4", "on_route calls track; tracking edits are not allowed in on_route")
}
