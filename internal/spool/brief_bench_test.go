package spool

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

// BenchmarkBriefDecode: decoding one queued recipient record and one
// message metadata record (as the million benchmark spools them) for
// the start-up index: in full with encoding/json, with encoding/json into
// a struct of the index's fields only, and with the brief walk
// (ScanQueued).
//
//	go test -run '^$' -bench BriefDecode -benchmem ./internal/spool
func BenchmarkBriefDecode(b *testing.B) {
	now := time.Now()
	rv, _ := json.Marshal(&Recipient{Address: "user123456@sink.test", Domain: "sink.test",
		Route:    &pipeline.Route{Kind: pipeline.RouteRelay, Host: "127.0.0.1", Port: 3722, TLS: "none"},
		Attempts: 1, NextAttempt: now.Add(6 * time.Hour),
		LastReply: &pipeline.Response{Code: 451, Enhanced: "4.4.1", Text: "dial tcp 127.0.0.1:3722: connect: connection refused"},
		Params:    pipeline.RcptParams{ORCPT: "rfc822;user123456@sink.test"}})
	mv, _ := json.Marshal(&Meta{ID: "01KB8ZQ0V5N6Y4J3X2W1T0S9R8", Source: "smtp", Sender: "bench@source.test", Tenant: "bench",
		Identity: "bench", Received: now, Size: 1400, Params: pipeline.MailParams{Body: "8BITMIME"}})
	type minimalRcpt struct {
		Domain      string             `json:"domain"`
		Route       *pipeline.Route    `json:"route"`
		NextAttempt time.Time          `json:"next"`
		LastReply   *pipeline.Response `json:"last"`
		Held        bool               `json:"held"`
	}
	type minimalMeta struct {
		ID       string              `json:"id"`
		Source   string              `json:"source"`
		Sender   string              `json:"sender"`
		Received time.Time           `json:"received"`
		Params   pipeline.MailParams `json:"params"`
	}
	b.Run("full", func(b *testing.B) {
		for b.Loop() {
			var r Recipient
			var m Meta
			if json.Unmarshal(rv, &r) != nil || json.Unmarshal(mv, &m) != nil {
				b.Fatal("decode")
			}
		}
	})
	b.Run("minimal-struct", func(b *testing.B) {
		for b.Loop() {
			var r minimalRcpt
			var m minimalMeta
			if json.Unmarshal(rv, &r) != nil || json.Unmarshal(mv, &m) != nil {
				b.Fatal("decode")
			}
		}
	})
	b.Run("brief", func(b *testing.B) {
		in := newInterner()
		for b.Loop() {
			var r Recipient
			var m Meta
			if in.briefRecipient(rv, &r) != nil || in.briefMeta(mv, &m) != nil {
				b.Fatal("decode")
			}
		}
	})
}
