package luahost

import (
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

func TestRcptFields(t *testing.T) {
	st, _, _ := inline(t, `on_rcpt = function(txn, rcpt)
    assert(rcpt.address == "Bob@Example.ORG", rcpt.address)
    assert(rcpt.local_part == "Bob" and rcpt["local"] == "Bob")
    assert(rcpt.domain == "example.org")
    assert(rcpt.relay == false)
    assert(tostring(rcpt) == "rcpt")
    return sluice.accept()
  end`)
	v, err := rcptHook(t, st).OnRcpt(bg, testTxn(), rcpt(t, "Bob@Example.ORG"))
	if err != nil || v.Action != pipeline.Accept {
		t.Fatalf("%+v %v", v, err)
	}
}

func TestRcptErrors(t *testing.T) {
	for _, tt := range []struct{ body, want string }{
		{`return rcpt.domian`, `rcpt has no field "domian"`},
		{`rcpt.domain = "evil.example"`, `rcpt.domain is read-only`},
	} {
		st, _, _ := inline(t, "on_rcpt = function(txn, rcpt)\n  "+tt.body+"\nend")
		_, err := rcptHook(t, st).OnRcpt(bg, testTxn(), rcpt(t, "a@example.org"))
		wantErrContains(t, err, "pipeline.lua:4", tt.want)
	}
}
