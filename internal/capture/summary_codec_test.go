package capture

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// TestSummaryCodec: a summary survives its binary form; one stored as
// JSON by an earlier version is still read; a truncated or unknown form
// is an error, never a panic.
func TestSummaryCodec(t *testing.T) {
	sm := &Summary{ID: "01J0000000000000000000000", Tenant: "acme", MessageID: "m1",
		Created: time.Date(2026, 11, 30, 19, 0, 0, 123456789, time.UTC), Sender: "app@s.test",
		Recipients: []string{"a@d.test", "b@d.test"}, From: "x@s.test", To: []string{"a@d.test"}, Cc: []string{},
		Subject: "Ünïcode — order 42", HeaderID: "h@s.test", Tags: []string{"t1", ""}, Size: 2048, Attachments: 3, Source: "api"}
	v := encodeSummary(nil, sm)
	got, err := decodeSummary(v)
	if err != nil || !reflect.DeepEqual(got, sm) {
		t.Fatalf("binary round trip: %+v %v, want %+v", got, err, sm)
	}
	neg := *sm
	neg.Created = time.Unix(-5, -7).UTC() // before 1970: a negative varint
	if got, err := decodeSummary(encodeSummary(nil, &neg)); err != nil || !got.Created.Equal(neg.Created) {
		t.Fatalf("negative time: %v %v", got, err)
	}
	j, _ := json.Marshal(sm)
	if got, err := decodeSummary(j); err != nil || !reflect.DeepEqual(got, sm) {
		t.Fatalf("JSON: %+v %v", got, err)
	}
	old := &Summary{ID: "x", Tenant: "t", Created: sm.Created}
	j, _ = json.Marshal(old)
	if got, err := decodeSummary(j); err != nil || got.To == nil || got.Tags == nil || got.Cc == nil || got.Recipients == nil {
		t.Fatalf("JSON with null lists: %+v %v", got, err)
	}
	for i := 0; i < len(v); i++ {
		if _, err := decodeSummary(v[:i]); err == nil {
			t.Fatalf("truncated to %d of %d bytes: no error", i, len(v))
		}
	}
	if _, err := decodeSummary([]byte{9, 1, 2}); err == nil {
		t.Fatal("unknown version: no error")
	}
	// A list length larger than what follows.
	if _, err := decodeSummary([]byte{summaryV1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0x03}); err != errSummaryShort {
		t.Fatal("huge list length: no error")
	}
}
