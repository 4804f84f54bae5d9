package capture

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/sluice-mta/sluice/internal/config"
)

// relayBenchMessage is a 2 KB message as sluice-bench sends it
// (internal/loadgen: 76-character lines of a rotating alphabet) and as
// the relay captures it, with its Received and the bench stage's
// X-Bench fields: the message of examples/bench/sandbox-vs-sink.sh.
func relayBenchMessage(k int) []byte {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	var b strings.Builder
	fmt.Fprintf(&b, "Received: from [127.0.0.1] (localhost [127.0.0.1])\r\n\tby relay.bench.test (sluice) with ESMTP id 01J%023d\r\n\tfor <b@sink.test>; Mon, 30 Nov 2026 19:00:00 +0000\r\n", k)
	fmt.Fprintf(&b, "X-Bench: 1\r\nFrom: <a@x.test>\r\nTo: <b@sink.test>\r\nSubject: bench %010d 3f2a1b9c8d7e\r\nDate: Mon, 30 Nov 2026 19:00:00 +0000\r\n", k)
	fmt.Fprintf(&b, "Message-ID: <%010d.3f2a1b9c8d7e@sluice-bench.invalid>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n", k)
	for line := 0; b.Len() < 2048+200; line++ {
		for i := 0; i < 76; i++ {
			b.WriteByte(alphabet[(i+line)%len(alphabet)])
		}
		b.WriteString("\r\n")
	}
	return []byte(b.String())
}

// BenchmarkCaptureSteps: what one capture of a 2 KB message costs, step
// by step, for sluice-bench's message ("bench") and a mail-like one
// (benchMessage, "mail"): the summary's parse, the searchable text and
// its words, the summary's encoding, the compression of body and text
// into the batch, the in-memory index (summary and words), and a whole
// Put (lagged sync, one goroutine, so the figure is a capture's own
// CPU). ns/op and allocs/op per step; "put" is the sum plus the commit
// and the turn.
func BenchmarkCaptureSteps(b *testing.B) {
	r := rand.New(rand.NewPCG(7, 7))
	for _, m := range []struct {
		name string
		data func(k int) []byte
	}{
		{"bench", relayBenchMessage},
		{"mail", func(k int) []byte { _, d := benchMessage(r, k); return d }},
	} {
		msgs := make([][]byte, 64)
		for i := range msgs {
			msgs[i] = m.data(i)
		}
		b.Run(m.name+"/parse", func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				_ = parseSummary(msgs[i%len(msgs)])
			}
		})
		fields := make([]summaryFields, len(msgs))
		for i, d := range msgs {
			fields[i] = parseSummary(d)
		}
		b.Run(m.name+"/text+words", func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				f := fields[i%len(fields)]
				newSearchText(f.subject, f.text).release()
			}
		})
		sm := &Summary{ID: "01J0000000000000000000000", Tenant: "bench", MessageID: "01J0000000000000000000001", Sender: "a@x.test",
			Recipients: []string{"b@sink.test"}, From: fields[0].from, To: fields[0].to, Cc: []string{}, Subject: fields[0].subject, Tags: []string{}, Size: len(msgs[0])}
		b.Run(m.name+"/summary", func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				_ = encodeSummary(make([]byte, 0, 256), sm)
			}
		})
		st := newSearchText(fields[0].subject, fields[0].text)
		b.Run(m.name+"/pack", func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				bt := new(pebble.Batch)
				setPacked(bt, bodyZKey(sm.ID), msgs[i%len(msgs)])
				setPacked(bt, textZKey("bench", sm.ID), st.text)
				bt.Close()
			}
		})
		b.Run(m.name+"/index", func(b *testing.B) {
			s := &Store{tenants: map[string]*tenantIndex{}, byID: map[string]*entry{}, byAddr: map[string][]*entry{}}
			sts := make([]*searchText, len(fields))
			for i, f := range fields {
				sts[i] = newSearchText(f.subject, f.text)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c := *sm
				c.ID = fmt.Sprint(i)
				e := s.index(&c)
				s.tenants["bench"].addSplit(e, sts[i%len(sts)])
			}
		})
		b.Run(m.name+"/put", func(b *testing.B) {
			s := open(b, b.TempDir(), Options{Retention: config.SandboxRetention{}})
			defer s.Close()
			b.ReportAllocs()
			c0 := processCPU()
			for i := 0; i < b.N; i++ {
				if _, err := s.PutInfo("bench", "01J0000000000000000000001", "a@x.test", []string{"b@sink.test"}, msgs[i%len(msgs)], nil, "smtp"); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(processCPU()-c0)/float64(b.N), "cpu-ns/op")
		})
	}
}
