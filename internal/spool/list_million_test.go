package spool

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

// BenchmarkListMillion: the first page of the listing with 1,000,000
// spooled messages (one deferred recipient each, in 100 queues and 1,000
// senders), which `sluice queue show` and GET /v1/queues/{q}/messages
// read. Filling the spool takes a minute or two; set
// SLUICE_BENCH_MESSAGES for another count.
//
//	go test -run '^$' -bench ListMillion -benchtime 20x -timeout 30m ./internal/spool
func BenchmarkListMillion(b *testing.B) {
	n := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("SLUICE_BENCH_MESSAGES")); err == nil && v > 0 {
		n = v
	}
	s := open(b, b.TempDir())
	defer s.Close()
	start := time.Now()
	next := time.Now().Add(time.Hour)
	last := &pipeline.Response{Code: 451, Enhanced: "4.7.1", Text: "try later"}
	for i := 0; i < n; i += 10000 {
		batch := s.NewBatch()
		for j := i; j < i+10000 && j < n; j++ {
			id := s.NewID()
			if err := batch.PutMessage(&Meta{ID: id, Source: "smtp", Sender: fmt.Sprintf("app%d@example.com", j%1000),
				Tenant: "acme", Received: time.Now(), Size: 2048}, []byte("x")); err != nil {
				b.Fatal(err)
			}
			d := fmt.Sprintf("d%d.test", j%100)
			if err := batch.PutRecipient(&Recipient{MsgID: id, Address: "u@" + d, Domain: d, Route: pipeline.MX(),
				Attempts: 1, NextAttempt: next, LastReply: last}); err != nil {
				b.Fatal(err)
			}
		}
		if err := batch.Commit(false); err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("filled %d messages in %v", n, time.Since(start).Round(time.Second))
	for _, c := range []struct {
		name string
		f    ListFilter
	}{
		{"first_page_100", ListFilter{}},
		{"first_page_1000", ListFilter{Limit: 1000}},
		{"queue_first_page_100", ListFilter{Queue: "d7.test"}},
		{"sender_first_page_100", ListFilter{Sender: ptr("app7@example.com")}},
		{"held_none_first_page", ListFilter{State: StateHeld}},
	} {
		b.Run(c.name, func(b *testing.B) {
			listed := 0
			for i := 0; i < b.N; i++ {
				p, err := s.List(c.f)
				if err != nil {
					b.Fatal(err)
				}
				listed = len(p.Messages)
			}
			b.ReportMetric(float64(listed), "messages/page")
		})
	}
}
