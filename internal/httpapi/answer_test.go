package httpapi

import (
	"encoding/json"
	"testing"
)

// TestAppendMessageAnswerMatchesMarshal: the hand-written 202 answer is
// byte for byte json.Marshal's, and anything that needs escaping falls back.
func TestAppendMessageAnswerMatchesMarshal(t *testing.T) {
	cases := []messageAnswer{
		{ID: "01JABCDEF", Recipients: []rcptAnswer{{Email: "a@x.test", Status: "queued"}}},
		{ID: "01JABCDEF", Recipients: []rcptAnswer{{Email: "a@x.test", Status: "queued"},
			{Email: "b@y.test", Status: "rejected", Code: 550, Enhanced: "5.7.1", Message: "no such user here"}}},
		{ID: "01JABCDEF", Recipients: []rcptAnswer{}},
		{ID: "01JABCDEF"},
		{ID: "x", Recipients: []rcptAnswer{{Email: `"q"@x.test`, Status: "queued"}}},
		{ID: "x", Recipients: []rcptAnswer{{Email: "a@x.test", Status: "rejected", Code: 550, Message: "a <b> & c"}}},
		{ID: "x", Recipients: []rcptAnswer{{Email: "ü@x.test", Status: "queued", Message: "tab\there"}}},
		{ID: "x", Recipients: []rcptAnswer{{Email: "a@x.test", Status: "queued", Message: "back\\slash \x7f"}}},
	}
	for i, a := range cases {
		want, err := json.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		fast, ok := appendMessageAnswer(nil, &a)
		it := &item{id: a.ID, results: a.Recipients}
		if got := it.answer(); string(got) != string(want) {
			t.Errorf("case %d: answer()\n got %s\nwant %s", i, got, want)
		}
		if ok && string(fast) != string(want) {
			t.Errorf("case %d: fast path\n got %s\nwant %s", i, fast, want)
		}
		if plain := i < 4; ok != plain {
			t.Errorf("case %d: fast path taken %v, want %v", i, ok, plain)
		}
	}
}

// BenchmarkMessageAnswer: the 202 answer of one message, as answer()
// builds it and as json.Marshal did before issue 21.
func BenchmarkMessageAnswer(b *testing.B) {
	it := &item{id: "01KB4ZJ6M3Y0QW7P9R8S2T5V6X", results: []rcptAnswer{{Email: "sink@dest.test", Status: "queued"}}}
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = it.answer()
		}
	})
	b.Run("json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = json.Marshal(messageAnswer{ID: it.id, Recipients: it.results})
		}
	})
}
