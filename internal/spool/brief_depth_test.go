package spool

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestJSONMembersDepthAsEncodingJSON: the walk rejects nesting past
// encoding/json's limit exactly where encoding/json does (a record the
// full decode rejects is not kept by the brief scan).
func TestJSONMembersDepthAsEncodingJSON(t *testing.T) {
	for _, n := range []int{9998, 9999, 10000, 10001, 10002} {
		s := `{"domain":"a.test","x":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}`
		var r Recipient
		ferr := json.Unmarshal([]byte(s), &r)
		berr := newInterner().briefRecipient([]byte(s), &r)
		if (ferr == nil) != (berr == nil) {
			t.Errorf("%d nested arrays: full err %v, brief err %v", n, ferr, berr)
		}
	}
}
