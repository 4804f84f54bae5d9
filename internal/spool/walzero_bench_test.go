package spool

import (
	"bytes"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// BenchmarkAcceptSyncOneTail measures one writer's synced 2 KB
// acceptances, zero-ahead on and off (a single SMTP session: the
// fdatasync is on the path of every message), reporting the distribution
// of one commit's time, not just its mean: with zero-ahead, a Pebble
// fdatasync that meets an extension's piece of zeros before it was
// written back writes it too (fdatasync flushes the whole file), so the
// zeros' cost can land on an acceptance. p50/p99/p99.9/max in µs.
func BenchmarkAcceptSyncOneTail(b *testing.B) {
	for _, zero := range []bool{true, false} {
		b.Run(fmt.Sprintf("zeroahead=%v", zero), func(b *testing.B) {
			s, err := Open(b.TempDir(), Options{NoWALZeroAhead: !zero, MinFree: -1, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			lat := make([]time.Duration, 0, b.N)
			b.SetBytes(2048)
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				if _, err := acceptSized(s, 2048); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			slices.Sort(lat)
			q := func(p float64) float64 { return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) }
			b.ReportMetric(q(0.5), "p50-us")
			b.ReportMetric(q(0.99), "p99-us")
			b.ReportMetric(q(0.999), "p99.9-us")
			b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "max-us")
		})
	}
}

// BenchmarkWALZeroAheadSync times one 2.3 KB append and fdatasync on a
// zero-ahead WAL file, split by whether an extension (zeros written, not
// yet synced) was running at the sync: the mean of each kind in µs, and
// how many syncs met one.
func BenchmarkWALZeroAheadSync(b *testing.B) {
	w, _ := createZeroWAL(b, vfs.Default)
	defer w.Close()
	f := w
	p := bytes.Repeat([]byte{1}, 2300)
	var during, other time.Duration
	var nDuring, nOther int
	b.ResetTimer()
	for range b.N {
		if _, err := f.Write(p); err != nil {
			b.Fatal(err)
		}
		w.mu.Lock()
		ext := w.running > 0
		w.mu.Unlock()
		t0 := time.Now()
		if err := f.SyncData(); err != nil {
			b.Fatal(err)
		}
		if d := time.Since(t0); ext {
			during += d
			nDuring++
		} else {
			other += d
			nOther++
		}
	}
	b.StopTimer()
	if nDuring > 0 {
		b.ReportMetric(float64(during.Microseconds())/float64(nDuring), "ext-sync-us")
	}
	if nOther > 0 {
		b.ReportMetric(float64(other.Microseconds())/float64(nOther), "other-sync-us")
	}
	b.ReportMetric(float64(nDuring), "syncs-during-ext")
}
