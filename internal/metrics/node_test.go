package metrics

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestNodeRegistersOnce(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, err := NewNode(reg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewNode(reg) // a second user of the same registry
	if err != nil {
		t.Fatal(err)
	}
	b.Accepted.WithLabelValues("smtp", "mx").Inc()
	if n := testutil.ToFloat64(a.Accepted.WithLabelValues("smtp", "mx")); n != 1 {
		t.Errorf("second NewNode counts apart: %v", n)
	}
	timer := a.StageTimer("policy", "on_rcpt")
	timer(time.Millisecond, false)
	timer(time.Millisecond, true)
	if n := testutil.ToFloat64(a.StageErrors.WithLabelValues("policy", "on_rcpt")); n != 1 {
		t.Errorf("stage errors = %v, want 1", n)
	}
	if n := testutil.CollectAndCount(a.StageSeconds); n != 1 {
		t.Errorf("stage histogram series = %d, want 1", n)
	}
	if (*Node)(nil).StageTimer("x", "on_rcpt") != nil {
		t.Error("a nil Node returned a timer")
	}
	for code, want := range map[int]string{421: "4xx", 550: "5xx", 250: "other"} {
		if got := Status(code); got != want {
			t.Errorf("Status(%d) = %q, want %q", code, got, want)
		}
	}
}

// BenchmarkMessagePath is what the message-path metrics cost one message
// relayed over a reused SMTP session with two timed stage hooks (the
// bench configuration's on_message and on_route): one accepted count,
// one spool commit observation, two stage timings, one delivery attempt
// with its duration, one delivered recipient — each with the clock
// reads the instrumentation makes. Children are resolved once, as the
// instrumented code does.
func BenchmarkMessagePath(b *testing.B) {
	n, err := NewNode(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	accepted := n.Accepted.WithLabelValues("smtp", "mx")
	onMessage, onRoute := n.StageTimer("policy", "on_message"), n.StageTimer("route", "on_route")
	attemptOK := n.Attempts.WithLabelValues("ok")
	delivered := n.Recipients.WithLabelValues("delivered", "")
	timers := map[[2]string]func(time.Duration, bool){{"policy", "on_message"}: onMessage, {"route", "on_route"}: onRoute}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			for _, k := range [][2]string{{"policy", "on_message"}, {"route", "on_route"}} {
				start := time.Now()
				timers[k](time.Since(start), false)
			}
			start := time.Now()
			n.SpoolCommitSeconds.Observe(time.Since(start).Seconds())
			accepted.Inc()
			start = time.Now()
			attemptOK.Inc()
			n.AttemptSeconds.Observe(time.Since(start).Seconds())
			delivered.Inc()
		}
	})
}
