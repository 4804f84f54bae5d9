package relay

import (
	"errors"
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

func TestSenderRule(t *testing.T) {
	id := &pipeline.Identity{Name: "alice", Senders: []string{"acme.example", "alerts@acme.org"}}
	for addr, want := range map[string]bool{
		"a@acme.example":        true,
		"A@ACME.Example":        true,
		"a@sub.acme.example":    false, // exactly the domain
		"a@acme.example.evil":   false,
		"alerts@acme.org":       true,
		"Alerts@ACME.org":       true,
		"other@acme.org":        false,
		"a@b@acme.example":      false,
		"not an address":        false,
		`"x@acme.example"@evil`: false,
	} {
		if got := SenderAllowed(id, addr); got != want {
			t.Errorf("SenderAllowed(%q) = %v, want %v", addr, got, want)
		}
	}
	if !SenderAllowed(nil, "x@anything") || !SenderAllowed(&pipeline.Identity{}, "x@anything") {
		t.Error("an identity without senders (or none) is restricted")
	}
	if err := CheckEnvelopeSender(id, ""); err != nil {
		t.Errorf("null sender refused: %v", err)
	}
	err := CheckEnvelopeSender(id, "ceo@other.example")
	var se *SenderError
	if !errors.As(err, &se) || se.Field != FieldEnvelope || pipeline.Reply(err).Code != 550 || pipeline.Reply(err).Enhanced != (pipeline.EnhancedCode{5, 7, 1}) {
		t.Fatalf("envelope: %v", err)
	}
	for _, tc := range []struct {
		from []string
		ok   bool
	}{
		{[]string{"Alice <a@acme.example>"}, true},
		{[]string{"=?utf-8?q?Al=C3=AFce?= <alerts@acme.org>"}, true},
		{nil, false},
		{[]string{"a@acme.example", "a@acme.example"}, false},
		{[]string{"a@acme.example, b@acme.example"}, false},
		{[]string{"Team: a@acme.example;"}, true}, // net/mail reads a group of one as that mailbox
		{[]string{"Team: a@acme.example, ceo@other.example;"}, false},
		{[]string{"CEO <ceo@other.example>"}, false},
		{[]string{"garbage <"}, false},
	} {
		err := CheckFromHeader(id, tc.from)
		if (err == nil) != tc.ok {
			t.Errorf("From %q: %v, want ok=%v", tc.from, err, tc.ok)
		}
		if err != nil && (!errors.As(err, &se) || se.Field != FieldFrom) {
			t.Errorf("From %q: %v is not a SenderError for the From field", tc.from, err)
		}
	}
	if err := CheckFromHeader(&pipeline.Identity{}, nil); err != nil {
		t.Errorf("unrestricted identity: %v", err)
	}
}
