package queue

import (
	"log/slog"
	"testing"
)

// BenchmarkStatsMillionWaiting: Stats with a million single-recipient
// records waiting (a down destination), the cost of one gauge read.
func BenchmarkStatsMillionWaiting(b *testing.B) {
	q := New(nil, &fakeDialer{}, Options{Logger: slog.New(slog.DiscardHandler)})
	q.waiting = make(waitHeap, 1_000_000)
	for i := range q.waiting {
		q.waiting[i].single = true
	}
	b.ResetTimer()
	for b.Loop() {
		if s := q.Stats(); s.WaitingRecipients != 1_000_000 {
			b.Fatal(s)
		}
	}
}
