package luahost

import (
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

// TestAuthTable: msg.auth shows the results earlier stages recorded, a
// DKIM pass among failures reads "pass", and a policy can reject on it.
func TestAuthTable(t *testing.T) {
	st, _, _ := inline(t, `on_message = function(msg)
    assert(msg.auth.spf == "softfail", tostring(msg.auth.spf))
    assert(msg.auth.dkim == "pass", tostring(msg.auth.dkim))
    assert(msg.auth.arc == nil)
    msg.auth.spf = "pass" -- a copy: changes nothing
    if msg.auth.dmarc == "fail" then
      return sluice.reject(550, "5.7.1", "DMARC says no")
    end
  end`)
	msg := testMsg(t)
	msg.AuthResults = []pipeline.AuthResult{
		{Method: "spf", Result: "softfail"},
		{Method: "dkim", Result: "fail"}, {Method: "dkim", Result: "pass"}, {Method: "dkim", Result: "permerror"},
		{Method: "dmarc", Result: "pass"},
	}
	v, err := st.(pipeline.MessageHook).OnMessage(bg, msg)
	if err != nil || v.Action != pipeline.Continue {
		t.Fatalf("%+v %v", v, err)
	}
	msg.AuthResults[4].Result = "fail"
	v, err = st.(pipeline.MessageHook).OnMessage(bg, msg)
	if err != nil || v.Action != pipeline.Reject || v.Text != "DMARC says no" {
		t.Fatalf("%+v %v", v, err)
	}
	if msg.AuthResults[0].Result != "softfail" {
		t.Fatal("msg.auth is not a copy")
	}
}
