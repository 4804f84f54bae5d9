package spool

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// briefOf is the part of a full decode that ScanQueued fills.
func briefOf(m *Meta, r *Recipient) (Meta, Recipient) {
	return Meta{ID: m.ID, Source: m.Source, Sender: m.Sender, Received: m.Received, Params: m.Params},
		Recipient{MsgID: r.MsgID, Idx: r.Idx, Domain: r.Domain, Route: r.Route, NextAttempt: r.NextAttempt, LastReply: r.LastReply, Held: r.Held}
}

// TestScanQueuedDecodesAsFull: ScanQueued yields what ScanRecipients
// yields for the fields it fills, on records written by the spool and on
// records with odd fields (unknown members and nesting, escapes, keys in
// another case or with escapes, duplicates, nulls, whitespace), and
// skips the corrupt records ScanRecipients skips.
func TestScanQueuedDecodesAsFull(t *testing.T) {
	sp, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	now := time.Now()
	b := sp.NewBatch()
	id := sp.NewID()
	_ = b.PutMessage(&Meta{ID: id, Source: "smtp", Sender: "s@a.test", Tenant: "t", Tags: []string{"x"}, Meta: map[string]string{"k": "v"},
		Received: now, Size: 3}, []byte("x"))
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	metas := map[string]string{
		"odd1": `{"ID":"odd1","source":"api","Sender":"s\u00e9@a.test","received":"2026-11-30T18:00:00.123456789+01:00",` +
			`"unknown":{"a":[1,-2.5e3,true,null,{"b":"\"}"}]},"params":{"requiretls":true,"ret":"HDRS"},"size":12}`,
		"odd2": " { \"id\" : \"odd2\" , \"sender\":\"\" ,\"sender\":\"last@wins.test\", \"re\\u0063eived\":\"2026-01-02T03:04:05Z\", \"params\": {\"tls_optional\": true} } ",
		"odd3": `{"id":"odd3","sender":null,"received":"2026-01-02T03:04:05Z","params":{}}`,
	}
	rcpts := map[string][]string{
		id: {
			`{"addr":"a@b.test","domain":"b.test","route":{"kind":"mx"},"attempts":2,"next":"2026-12-01T00:00:00Z","last":{"code":451,"enhanced":"4.4.1","text":"x"},"params":{"notify":["FAILURE"]}}`,
			`{"addr":"a@b.test","Domain":"B.test","ROUTE":{"kind":"relay","host":"h","port":2525},"held":true,"next":"0001-01-01T00:00:00Z"}`,
			`{"domain":"c.test","route":null,"last":null,"held":false,"extra":[[[]]],"domain":"d\u00e9.test"}`,
			`{"domain":"bad.test","addr":tru}`, // corrupt: skipped by both
			`{"domain":"bad.test","addr":"a\x01"}`,
			`{"domain":"bad.test"} x`,
			`{"domain":"e.test","held":true,"\u0068eld":false}`, // a key with an escape: decoded in full
			`{"domain":"e.test","route":{"kind":"mx","tls":"dane"},"next":"2026-12-01T00:00:00.5Z"}`,
		},
		"odd1": {`{"domain":"f.test","route":{"kind":"mx"}}`},
		"odd2": {`{"domain":"g.test","route":{"kind":"mx"},"last":{"code":421,"text":"busy \"now\""}}`},
		"odd3": {`{"domain":"h.test"}`},
	}
	for mid, raw := range metas {
		if err := sp.db.Set(metaKey(mid), []byte(raw), pebble.Sync); err != nil {
			t.Fatal(err)
		}
	}
	for mid, rs := range rcpts {
		for i, raw := range rs {
			if err := sp.db.Set(rcptKey(mid, i), []byte(raw), pebble.Sync); err != nil {
				t.Fatal(err)
			}
		}
	}
	type pair struct {
		m Meta
		r Recipient
	}
	scan := func(f func(func(*Meta, *Recipient) error) error) []pair {
		var out []pair
		if err := f(func(m *Meta, r *Recipient) error {
			bm, br := briefOf(m, r)
			out = append(out, pair{bm, br})
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	full, brief := scan(sp.ScanRecipients), scan(sp.ScanQueued)
	if len(full) != 8 {
		t.Fatalf("full scan: %d recipients, want 8 (3 corrupt skipped)", len(full))
	}
	if len(brief) != len(full) {
		t.Fatalf("brief scan: %d recipients, full %d", len(brief), len(full))
	}
	for i := range full {
		if !reflect.DeepEqual(full[i], brief[i]) {
			t.Errorf("recipient %d:\nfull  %+v\nbrief %+v", i, full[i], brief[i])
		}
	}
	if !brief[1].r.Held || brief[1].r.Domain != "B.test" || brief[1].r.Route.Port != 2525 || brief[2].r.Domain != "dé.test" {
		t.Errorf("odd keys not decoded as encoding/json does: %+v %+v", brief[1].r, brief[2].r)
	}
}

// TestJSONMembersValidates: the walk accepts what encoding/json accepts
// as one object and rejects the rest.
func TestJSONMembersValidates(t *testing.T) {
	for _, s := range []string{
		`{}`, ` {} `, `{"a":1}`, `{"a":-0.5E+10,"b":[],"c":{},"d":[1,[2,{"e":null}]],"f":"\u00e9\n\"\\\/"}`,
		`{"a":true,"b":false}`, "{\"a\":\"\xff\"}",
		`[]`, `{`, `{"a"}`, `{"a":}`, `{"a":1,}`, `{"a":01}`, `{"a":1.}`, `{"a":.5}`, `{"a":-}`, `{"a":1e}`,
		`{"a":tru}`, `{"a":nul}`, `{"a":"\x"}`, `{"a":"\u12"}`, "{\"a\":\"\t\"}", `{"a":[1 2]}`, `{"a":{"b" 1}}`,
		`{"a":1} {}`, `{a:1}`, `{"a":[}`, `{"a":"x}`, ``, `{"a":1}}`,
	} {
		want := json.Valid([]byte(s)) && s != "" && s[len(s)-1] != ']' && s[skipSpace([]byte(s), 0)] == '{'
		err := jsonMembers([]byte(s), func(k, v []byte) error { return nil })
		if got := err == nil; got != want {
			t.Errorf("%q: valid %v, want %v (%v)", s, got, want, err)
		}
	}
}
