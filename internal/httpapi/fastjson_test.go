package httpapi

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// stdDecode is decodeJSON without the fast path.
func stdDecode(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if rest := body[dec.InputOffset():]; len(bytes.TrimSpace(rest)) != 0 {
		return &json.SyntaxError{}
	}
	return nil
}

var fastSeeds = []string{
	`{}`,
	`{"to":"user@example.com","from":"system@myapp.com","subject":"Your Invoice","html":"<h1>Invoice #1234</h1>","track_opens":true}`,
	`{"from":"a@b.test","to":"c@d.test","track_opens":false,"track_clicks": true ,"list_unsubscribe":null,"track_opens":true}`,
	`{"messages":[{"from":"a@b.test","to":"c@d.test","track_clicks":fals}]}`,
	` {"from":"a@b.test","to":"c@d.test","subject":"hi","text":"x\ny\"z\\\/\b\f\r\t\u00e9\u20ac\u0000"} `,
	`{"from":"a@b.test","to":["c@d.test","e@f.test"],"cc":[],"bcc":"g@h.test","reply_to":["r@s.test"],"html":"<p>\u003cb\u003e</p>"}`,
	`{"from":"a@b.test","to":"c@d.test","headers":{"X-A":"1","X-B":"2","X-A":"3"},"metadata":{},"tags":["a","b"]}`,
	`{"from":"a@b.test","to":"c@d.test","attachments":[{"filename":"a.txt","content_type":"text/plain","content":"aGk=","encoding":"base64","content_id":"x"},{}]}`,
	`{"messages":[{"from":"a@b.test","to":"c@d.test","text":"héllo"},{}]}`,
	`{"messages":[]}`,
	`{"From":"a@b.test"}`,
	`{"from":"a","from":"b"}`,
	`{"from":null}`,
	`{"to":[null]}`,
	`{"text":"\ud83d\ude00"}`,
	`{"text":"\ud83d"}`,
	"{\"text\":\"\xff\"}",
	"{\"text\":\"a\tb\"}",
	`{"subject":1}`,
	`{"nope":"x"}`,
	`{"from":"a"} x`,
	`{"from":"a"}` + "\f",
	`[]`,
	`{"messages":[{"from":"a","x":1}]}`,
	`{"from":"a",}`,
	`{"text":"\u12G4"}`,
	`{"from":"a@b.test","to":"c@d.test","require_tls":true,"require_tls":false}`,
	`{"require_tls":null}`,
	`{"require_tls":"yes"}`,
}

func FuzzFastDecode(f *testing.F) {
	for _, s := range fastSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		checkFast(t, []byte(s))
	})
}

func TestFastDecodeSeeds(t *testing.T) {
	for _, s := range fastSeeds {
		checkFast(t, []byte(s))
	}
	// The load generator's shape takes the fast path.
	body := []byte(`{"from":"bench@example.com","to":["sink@dest.test"],"subject":"bench 000001 run","text":"` +
		strings.Repeat(`The quick brown fox\n`, 50) + `"}`)
	var m messageRequest
	if !fastDecode(body, &m) {
		t.Fatal("the plain shape did not take the fast path")
	}
	var b batchRequest
	if !fastDecode([]byte(`{"messages":[`+string(body)+`,`+string(body)+`]}`), &b) || len(b.Messages) != 2 {
		t.Fatal("the plain batch shape did not take the fast path")
	}
}

// checkFast: what the fast path accepts, encoding/json decodes to the
// same value; and decodeJSON's result is encoding/json's.
func checkFast(t *testing.T, body []byte) {
	t.Helper()
	for _, mk := range []func() any{func() any { return new(messageRequest) }, func() any { return new(batchRequest) }} {
		fast, std := mk(), mk()
		ok := fastDecode(body, fast)
		err := stdDecode(body, std)
		if ok {
			if err != nil {
				t.Fatalf("%q: fast path accepted, encoding/json: %v", body, err)
			}
			if !reflect.DeepEqual(fast, std) {
				t.Fatalf("%q: fast path %#v, encoding/json %#v", body, fast, std)
			}
		}
		viaAPI := mk()
		if ce := checkBody(body, viaAPI); ce != nil {
			// Refused before decoding (a limit, invalid UTF-8, nesting):
			// decodeJSON gives that answer, whatever encoding/json does.
			if e := decodeJSON(body, viaAPI); e == nil || *e != *ce {
				t.Fatalf("%q: checkBody %v, decodeJSON %v", body, ce, e)
			}
			continue
		}
		if e := decodeJSON(body, viaAPI); (e == nil) != (err == nil && len(bytes.TrimSpace(body)) > 0) {
			t.Fatalf("%q: decodeJSON %v, encoding/json %v", body, e, err)
		} else if e == nil && !reflect.DeepEqual(viaAPI, std) {
			t.Fatalf("%q: decodeJSON %#v, encoding/json %#v", body, viaAPI, std)
		}
	}
}
