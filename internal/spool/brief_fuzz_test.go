package spool

import (
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzBriefRecipient: the brief decoders fail where encoding/json fails
// and otherwise fill what it fills (go test -fuzz FuzzBriefRecipient).
func FuzzBriefRecipient(f *testing.F) {
	for _, s := range []string{
		`{"addr":"a@b.test","domain":"b.test","route":{"kind":"mx"},"attempts":2,"next":"2026-12-01T00:00:00Z","last":{"code":451,"enhanced":"4.4.1","text":"x"},"params":{"notify":["FAILURE"]},"held":true}`,
		`{"id":"x","source":"smtp","sender":"s@a.test","tenant":"t","tags":["a"],"meta":{"k":"v"},"received":"2026-12-01T00:00:00Z","size":3,"params":{"ret":"HDRS"}}`,
		`{"Domain":"a\u00e9","ROUTE":null,"held":null}`, ` null `, `{}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var fr, br Recipient
		ferr := json.Unmarshal(data, &fr)
		berr := newInterner().briefRecipient(data, &br)
		if (ferr == nil) != (berr == nil) {
			t.Fatalf("recipient %q: full err %v, brief err %v", data, ferr, berr)
		}
		if ferr == nil {
			_, f := briefOf(&Meta{}, &fr)
			_, b := briefOf(&Meta{}, &br)
			if !reflect.DeepEqual(f, b) {
				t.Fatalf("recipient %q:\nfull  %+v\nbrief %+v", data, f, b)
			}
		}
		var fm, bm Meta
		ferr = json.Unmarshal(data, &fm)
		berr = newInterner().briefMeta(data, &bm)
		if (ferr == nil) != (berr == nil) {
			t.Fatalf("meta %q: full err %v, brief err %v", data, ferr, berr)
		}
		if ferr == nil {
			f, _ := briefOf(&fm, &Recipient{})
			b, _ := briefOf(&bm, &Recipient{})
			if !reflect.DeepEqual(f, b) {
				t.Fatalf("meta %q:\nfull  %+v\nbrief %+v", data, f, b)
			}
		}
	})
}
