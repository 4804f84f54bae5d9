package tlsrpt_test

import (
	"strconv"
	"testing"

	"github.com/sluice-mta/sluice/internal/tlsrpt"
)

// BenchmarkRecord is the cost a delivery session pays for TLS reporting:
// one Record into an existing row (100 domains, a success).
func BenchmarkRecord(b *testing.B) {
	r := tlsrpt.NewRecorder(tlsrpt.Options{})
	pol := []string{"version: STSv1", "mode: enforce", "mx: mx.example.test", "max_age: 86400"}
	sessions := make([]tlsrpt.Session, 100)
	for i := range sessions {
		sessions[i] = tlsrpt.Session{Time: day, Domain: "d" + strconv.Itoa(i) + ".test", Type: tlsrpt.PolicySTS, Policy: pol,
			MXHost: "mx.example.test", ReceivingIP: "192.0.2.1", SendingIP: "198.51.100.1"}
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			r.Record(sessions[i%len(sessions)])
			i++
		}
	})
}

// BenchmarkFlush saves 1000 changed rows to a real spool.
func BenchmarkFlush(b *testing.B) {
	sp, err := openSpoolB(b)
	if err != nil {
		b.Fatal(err)
	}
	defer sp.Close()
	r := tlsrpt.NewRecorder(tlsrpt.Options{Store: sp})
	b.ReportAllocs()
	for b.Loop() {
		for i := range 1000 {
			r.Record(tlsrpt.Session{Time: day, Domain: "d" + strconv.Itoa(i) + ".test", Type: tlsrpt.PolicyNotFound, MXHost: "mx.test"})
		}
		if err := r.Flush(); err != nil {
			b.Fatal(err)
		}
	}
}
