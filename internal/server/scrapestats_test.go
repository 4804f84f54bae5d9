package server

import (
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/queue"
)

// The queue gauges of one scrape share one Stats; a later scrape reads
// it again.
func TestScrapeStatsSharedWithinAScrape(t *testing.T) {
	calls := 0
	now := time.Unix(1000, 0)
	stats := scrapeStats(func() queue.Stats { calls++; return queue.Stats{Messages: calls} }, func() time.Time { return now })
	for i := 0; i < 5; i++ { // five gauges
		if got := stats().Messages; got != 1 {
			t.Fatalf("gauge %d read Stats number %d, want the scrape's first", i, got)
		}
	}
	now = now.Add(15 * time.Second) // the next scrape
	if got := stats().Messages; got != 2 || calls != 2 {
		t.Fatalf("next scrape: Stats number %d after %d calls, want 2 and 2", got, calls)
	}
}
