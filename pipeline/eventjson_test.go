package pipeline

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// jsonPieces are the string fragments random event strings are made of:
// everything encoding/json escapes, multi-byte and invalid UTF-8.
var jsonPieces = []string{"", "a", "bob@example.org", "\"", "\\", "<", ">", "&", "\b", "\f", "\n", "\r", "\t", "\x00", "\x1f",
	"\x7f", " ", "é", "日本", "\u2028", "\u2029", "😀", "\xff", "\xc3", "\xe2\x80", "\xed\xa0\x80", "\u2027", "\u202a", "/", "'"}

func randString(r *rand.Rand) string {
	var b strings.Builder
	for n := r.IntN(6); n > 0; n-- {
		b.WriteString(jsonPieces[r.IntN(len(jsonPieces))])
	}
	return b.String()
}

func randEvent(r *rand.Rand) *Event {
	s := func() string { return randString(r) }
	zones := []*time.Location{time.UTC, time.FixedZone("", 5*3600+30*60), time.FixedZone("", -7*3600), time.FixedZone("", 0)}
	ev := &Event{Schema: r.IntN(3), EventID: s(), Type: s(), MessageID: s(), Recipient: s(), Sender: s(), Source: s(),
		Tenant: s(), Queue: s(), Attempt: r.IntN(5) - 1, BounceClass: s(), Size: r.IntN(1 << 20), Node: s(),
		RequireTLS: r.IntN(2) == 0,
		Time:       time.Unix(r.Int64N(4e9), r.Int64N(1e9)*int64(r.IntN(2))).In(zones[r.IntN(len(zones))])}
	if r.IntN(2) == 0 {
		ev.Response = &Response{Code: r.IntN(600), Enhanced: s(), Text: s()}
	}
	if r.IntN(2) == 0 {
		ev.Remote = &Remote{Host: s(), IP: s(), TLS: s(), TLSCipher: s(), TLSPolicy: s(), TLSValidated: r.IntN(2) == 0,
			MTASTSFailure: s(), TLSFailure: s()}
	}
	switch r.IntN(3) {
	case 1:
		ev.Tags = []string{}
	case 2:
		for n := r.IntN(4) + 1; n > 0; n-- {
			ev.Tags = append(ev.Tags, s())
		}
	}
	switch r.IntN(3) {
	case 1:
		ev.Metadata = map[string]string{}
	case 2:
		ev.Metadata = map[string]string{}
		for n := r.IntN(5) + 1; n > 0; n-- {
			ev.Metadata[s()] = s()
		}
	}
	if r.IntN(2) == 0 {
		ev.Engagement = &Engagement{URL: s(), UserAgent: s(), Machine: r.IntN(2) == 0, MachineReason: s(), Method: s()}
	}
	return ev
}

// AppendJSON writes what json.Marshal writes, for random events with
// every field set or empty and strings full of what JSON escapes.
func TestEventAppendJSONIsMarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 1))
	for i := 0; i < 20000; i++ {
		ev := randEvent(r)
		want, werr := json.Marshal(ev)
		got, gerr := ev.AppendJSON([]byte("prefix"))
		if (werr != nil) != (gerr != nil) {
			t.Fatalf("event %d: json.Marshal err %v, AppendJSON err %v", i, werr, gerr)
		}
		if werr != nil {
			continue
		}
		if !bytes.Equal(got, append([]byte("prefix"), want...)) {
			t.Fatalf("event %d (%+v):\n got %s\nwant %s", i, ev, got[len("prefix"):], want)
		}
	}
}

// Times json.Marshal refuses are refused, and b comes back unchanged.
func TestEventAppendJSONBadTime(t *testing.T) {
	for _, tm := range []time.Time{time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("", 24*3600))} {
		ev := &Event{Time: tm}
		_, werr := json.Marshal(ev)
		got, err := ev.AppendJSON([]byte("x"))
		if err == nil || werr == nil || string(got) != "x" {
			t.Errorf("%v: AppendJSON = %q, %v; json.Marshal err %v", tm, got, err, werr)
		}
	}
}

func FuzzEventAppendJSON(f *testing.F) {
	f.Add("bob@example.org", "k", "v", "<&>\u2028\xff")
	f.Fuzz(func(t *testing.T, a, k, v, c string) {
		ev := &Event{Schema: 1, EventID: a, Type: c, Recipient: a, Tags: []string{c, a}, Metadata: map[string]string{k: v, v: k},
			Response: &Response{Text: c}, Time: time.Unix(1700000000, 5)}
		want, _ := json.Marshal(ev)
		got, err := ev.AppendJSON(nil)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("got %s (%v)\nwant %s", got, err, want)
		}
	})
}

// BenchmarkEventJSON: a delivered event as the queue records it, by
// json.Marshal and by AppendJSON into a reused buffer.
func BenchmarkEventJSON(b *testing.B) {
	ev := &Event{Schema: 1, EventID: "01KBD2Y4W7RZQ3M0Q8V5J5TQXH", Type: EventDelivered, Time: time.Now().UTC(),
		MessageID: "01KBD2Y4W7RZQ3M0Q8V5J5TQXG", Recipient: "bob@example.org", Sender: "app@example.com",
		Source: "smtp", Queue: "relay:127.0.0.1:2602", Attempt: 1, Tags: []string{}, Metadata: map[string]string{}, Size: 2100, Node: "bench-1",
		Response: &Response{Code: 250, Enhanced: "2.0.0", Text: "OK queued as 12345"},
		Remote:   &Remote{Host: "127.0.0.1", IP: "127.0.0.1", TLSPolicy: "none"}}
	b.Run("json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := json.Marshal(ev); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("AppendJSON", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for i := 0; i < b.N; i++ {
			var err error
			if buf, err = ev.AppendJSON(buf[:0]); err != nil {
				b.Fatal(err)
			}
		}
	})
}
