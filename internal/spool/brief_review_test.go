package spool

import (
	"encoding/json"
	"reflect"
	"testing"
)

// TestBriefMatchesFullDecodeEdgeCases: the brief decoders give what
// encoding/json gives for the fields ScanQueued fills, or fail where it
// fails, on records the spool never writes (issue 21 review).
func TestBriefMatchesFullDecodeEdgeCases(t *testing.T) {
	rcpts := []string{
		`{"domain":"a.test","route":{"kind":"relay","host":"h"},"route":{"port":2525}}`,
		`{"domain":"a.test","last":{"code":451},"last":{"text":"x"}}`,
		`{"domain":"a.test","route":{"kind":"mx"},"route":null}`,
		`{"domain":"a.test","route":null,"route":{"kind":"mx"}}`,
		`{"domain":"a.test","next":"2026-12-01T00:00:00Z","next":null}`,
		`{"domain":"a.test","held":true,"held":null}`,
		`{"domain":"a.test","domain":null}`,
		`{"domain":"a\u002etest","route":{"kind":"mx","port":2.5e1}}`,
		`{"domain":"a.test","route":{"kind":"mx","port":1e400}}`,
		`{"domain":"a.test","route":{"kind":"mx","port":25.5}}`,
		"\t{\n\"domain\"\r:\n\"a.test\" }\n",
		`{"next":"2026-12-01T00:00:00Z","domain":"a.test","held":true}`,
		`{"domain":"a.test","held":1}`,
		`{"domain":"a.test","next":123}`,
		`{"domain":"a.test","next":"bad"}`,
		`{"domain":1}`,
		`{"domain":"a.test","route":[]}`,
		`{"domain":"a.test","route":"mx"}`,
		`{"domain":"a.test","attempts":2.0}`,
		`{"domain":"a.test","attempts":2e0}`,
		`{"domain":"a.test","attempts":-3}`,
		`{"domain":"a.test","attempts":99999999999999999999}`,
		`{"domain":"a.test","attempts":"2"}`,
		`{"domain":"a.test","addr":7}`,
		`{"domain":"a.test","addr":null,"warned":null,"params":null,"attempts":null}`,
		`{"domain":"a.test","warned":false}`,
		`{"domain":"a.test","params":[]}`,
		`{"domain":"a.test","params":{"notify":"NEVER"}}`,
		`{"domain":"a.test","params":{"notify":["NEVER"],"orcpt":1}}`,
		`{"domain":"a.test","params":{"notify":["NEVER"],"orcpt":"rfc822;a@b"}}`,
		`{"domain":"a.test","Route":{"kind":"mx"},"rOUTE":{"host":"h"}}`,
		` null `,
	}
	for _, raw := range rcpts {
		var full Recipient
		ferr := json.Unmarshal([]byte(raw), &full)
		var brief Recipient
		berr := newInterner().briefRecipient([]byte(raw), &brief)
		if (ferr == nil) != (berr == nil) {
			t.Errorf("%s: full err %v, brief err %v", raw, ferr, berr)
			continue
		}
		if ferr != nil {
			continue
		}
		_, f := briefOf(&Meta{}, &full)
		_, b := briefOf(&Meta{}, &brief)
		if !reflect.DeepEqual(f, b) {
			t.Errorf("%s:\nfull  %+v %+v %+v\nbrief %+v %+v %+v", raw, f, f.Route, f.LastReply, b, b.Route, b.LastReply)
		}
	}
	metas := []string{
		`{"id":"x","params":{"ret":"FULL"},"params":{"envid":"e"}}`,
		`{"id":"x","params":{"ret":"FULL"},"params":null}`,
		`{"id":"x","received":"2026-12-01T00:00:00Z","received":null}`,
		`{"id":"x","sender":"a\u0040b.test","source":"sm\u0074p"}`,
		`{"id":"x","size":"big"}`,
		`{"id":"x","tags":"t"}`,
		`null`,
		`{"id":"x","size":1.0}`,
		`{"id":"x","size":12,"tenant":"t","identity":null,"tags":["a"],"meta":{"k":"v"}}`,
		`{"id":"x","tenant":1}`,
		`{"id":"x","meta":[]}`,
		`{"id":"x","tags":[1]}`,
		`{"id":"x","tags":["a",null]}`,
		`{"id":"x","meta":{"k":1}}`,
		`{"id":"x","meta":{"k":"v"},"meta":{"k":["v"]}}`,
		`{"id":"x","params":{"smtputf8":"yes"}}`,
		`{"id":"x","received":1.5e9}`,
	}
	for _, raw := range metas {
		var full Meta
		ferr := json.Unmarshal([]byte(raw), &full)
		var brief Meta
		berr := newInterner().briefMeta([]byte(raw), &brief)
		if (ferr == nil) != (berr == nil) {
			t.Errorf("%s: full err %v, brief err %v", raw, ferr, berr)
			continue
		}
		if ferr != nil {
			continue
		}
		f, _ := briefOf(&full, &Recipient{})
		b, _ := briefOf(&brief, &Recipient{})
		if !reflect.DeepEqual(f, b) {
			t.Errorf("%s:\nfull  %+v\nbrief %+v", raw, f, b)
		}
	}
}
