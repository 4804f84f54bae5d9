package testutil

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
)

// validEvent is a delivered event as the spool writes it.
const validEvent = `{"schema":1,"event_id":"01KAT6Z4M3N5J6WQ3S7E1V0R2B","type":"delivered","time":"2026-11-23T19:40:00.123Z",
 "message_id":"01KAT6Z4ABCDEF0123456789XY","recipient":"bob@example.org","sender":"app@example.com",
 "source":"smtp","tenant":"","queue":"example.org","attempt":1,
 "response":{"code":250,"enhanced":"2.0.0","text":"OK"},
 "remote":{"host":"mx1.example.org","ip":"192.0.2.1","tls":"TLS1.3"},
 "bounce_class":"","tags":["invoice"],"metadata":{"order":"1234"},"size":2048,"node":"relay-1"}`

func TestEventSchemaAcceptsValid(t *testing.T) {
	if err := CheckEvent([]byte(validEvent)); err != nil {
		t.Fatal(err)
	}
	for _, mod := range []func(m map[string]any){
		func(m map[string]any) { delete(m, "response"); delete(m, "remote") },
		func(m map[string]any) { m["type"] = "bounced"; m["bounce_class"] = "InvalidRecipient" },
		func(m map[string]any) { m["type"] = "expired"; m["bounce_class"] = "expired" },
		func(m map[string]any) { m["remote"].(map[string]any)["ip"] = "2001:db8::1" },
		func(m map[string]any) { m["remote"].(map[string]any)["ip"] = "" },
		func(m map[string]any) {
			r := m["remote"].(map[string]any)
			r["tls_cipher"], r["tls_policy"], r["tls_validated"] = "TLS_AES_128_GCM_SHA256", "mta-sts", true
			r["mta_sts_failure"] = "no TLS"
		},
		func(m map[string]any) { m["response"].(map[string]any)["enhanced"] = "" },
		func(m map[string]any) { m["tags"] = []any{}; m["metadata"] = map[string]any{} },
		func(m map[string]any) { m["sender"] = ""; m["source"] = "dsn"; m["time"] = "2026-11-23T19:40:00Z" },
		func(m map[string]any) { m["type"] = "suppression_added"; m["message_id"] = ""; m["source"] = "api" },
	} {
		js := modify(t, mod)
		if err := CheckEvent(js); err != nil {
			t.Errorf("%s: %v", js, err)
		}
	}
}

func TestEventSchemaRefusesInvalid(t *testing.T) {
	for name, mod := range map[string]func(m map[string]any){
		"missing event_id":     func(m map[string]any) { delete(m, "event_id") },
		"empty message_id":     func(m map[string]any) { m["message_id"] = "" },
		"missing tags":         func(m map[string]any) { delete(m, "tags") },
		"null tags":            func(m map[string]any) { m["tags"] = nil },
		"null metadata":        func(m map[string]any) { m["metadata"] = nil },
		"unknown field":        func(m map[string]any) { m["extra"] = 1 },
		"unknown type":         func(m map[string]any) { m["type"] = "sent" },
		"unknown source":       func(m map[string]any) { m["source"] = "ftp" },
		"schema 2":             func(m map[string]any) { m["schema"] = 2 },
		"time not RFC 3339":    func(m map[string]any) { m["time"] = "2026-11-23 19:40:00" },
		"event_id not a ULID":  func(m map[string]any) { m["event_id"] = "abc" },
		"attempt negative":     func(m map[string]any) { m["attempt"] = -1 },
		"size fractional":      func(m map[string]any) { m["size"] = 1.5 },
		"code out of range":    func(m map[string]any) { m["response"].(map[string]any)["code"] = 99 },
		"enhanced malformed":   func(m map[string]any) { m["response"].(map[string]any)["enhanced"] = "5.1" },
		"response extra field": func(m map[string]any) { m["response"].(map[string]any)["x"] = "" },
		"remote without tls":   func(m map[string]any) { delete(m["remote"].(map[string]any), "tls") },
		"unknown tls_policy":   func(m map[string]any) { m["remote"].(map[string]any)["tls_policy"] = "strict" },
		"unknown tls_failure":  func(m map[string]any) { m["remote"].(map[string]any)["tls_failure"] = "bad-cert" },
		"remote ip not an IP":  func(m map[string]any) { m["remote"].(map[string]any)["ip"] = "mx1" },
		"bounce_class spaces":  func(m map[string]any) { m["bounce_class"] = "hard bounce" },
		"metadata non-string":  func(m map[string]any) { m["metadata"] = map[string]any{"n": 1} },
		"tags non-string":      func(m map[string]any) { m["tags"] = []any{1} },
	} {
		if err := CheckEvent(modify(t, mod)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestEventSchemaDocsExample checks the example in docs/events.md.
func TestEventSchemaDocsExample(t *testing.T) {
	md, err := os.ReadFile("../../docs/events.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```json\n(.*?)```").FindAllSubmatch(md, -1)
	if len(blocks) == 0 {
		t.Fatal("no json example in docs/events.md")
	}
	for _, b := range blocks {
		js := strings.ReplaceAll(string(b[1]), "\n", "")
		if !strings.Contains(js, `"schema":1`) {
			continue // not an event (a webhook request body is one, though)
		}
		if err := CheckEvent([]byte(js)); err != nil {
			t.Errorf("docs/events.md example: %v\n%s", err, js)
		}
	}
}

func modify(t *testing.T, mod func(map[string]any)) []byte {
	var m map[string]any
	if err := json.Unmarshal([]byte(validEvent), &m); err != nil {
		t.Fatal(err)
	}
	mod(m)
	js, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return js
}
