package loadgen

import (
	"bytes"
	"context"
	"errors"
	"net/mail"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/internal/testutil"
)

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		d := make([]time.Duration, len(v))
		for i, x := range v {
			d[i] = time.Duration(x) * time.Millisecond
		}
		return d
	}
	ten := ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	tests := []struct {
		name string
		d    []time.Duration
		p    float64
		want time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one p50", ms(7), 50, 7 * time.Millisecond},
		{"one p99", ms(7), 99, 7 * time.Millisecond},
		{"two p50", ms(1, 2), 50, 1 * time.Millisecond},
		{"two p51", ms(1, 2), 51, 2 * time.Millisecond},
		{"ten p0", ten, 0, 1 * time.Millisecond},
		{"ten p10", ten, 10, 1 * time.Millisecond},
		{"ten p11", ten, 11, 2 * time.Millisecond},
		{"ten p50", ten, 50, 5 * time.Millisecond},
		{"ten p90", ten, 90, 9 * time.Millisecond},
		{"ten p99", ten, 99, 10 * time.Millisecond},
		{"ten p100", ten, 100, 10 * time.Millisecond},
		{"hundred p50", hundred, 50, 50 * time.Millisecond},
		{"hundred p90", hundred, 90, 90 * time.Millisecond},
		{"hundred p99", hundred, 99, 99 * time.Millisecond},
		{"hundred p99.9", hundred, 99.9, 100 * time.Millisecond},
		{"hundred p1", hundred, 1, 1 * time.Millisecond},
		{"hundred p150", hundred, 150, 100 * time.Millisecond},
		{"hundred p-1", hundred, -1, 1 * time.Millisecond},
	}
	for _, tc := range tests {
		if got := Percentile(tc.d, tc.p); got != tc.want {
			t.Errorf("%s: Percentile(p=%v) = %v, want %v", tc.name, tc.p, got, tc.want)
		}
	}
}

func TestSummarize(t *testing.T) {
	d := []time.Duration{5 * time.Millisecond, time.Millisecond, 3 * time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond}
	s := Summarize(d)
	if s.Count != 5 || s.P50 != 3 || s.Max != 5 || s.Mean != 3 || s.P90 != 5 || s.P99 != 5 {
		t.Fatalf("Summarize = %+v", s)
	}
	if (Summarize(nil) != LatencySummary{}) {
		t.Fatal("Summarize(nil) not zero")
	}
}

func TestBodyLinesExactSize(t *testing.T) {
	for _, eol := range []string{"\r\n", "\n"} {
		for n := 2; n < 700; n++ {
			b := appendBodyLines(nil, n, eol)
			if len(b) != n {
				t.Fatalf("eol %q n=%d: got %d bytes", eol, n, len(b))
			}
			if !bytes.HasSuffix(b, []byte(eol)) {
				t.Fatalf("eol %q n=%d: does not end with eol", eol, n)
			}
			for _, l := range strings.Split(strings.TrimSuffix(string(b), eol), eol) {
				if len(l) > 76 || strings.HasPrefix(l, ".") || strings.ContainsAny(l, "\r\n") {
					t.Fatalf("eol %q n=%d: bad line %q", eol, n, l)
				}
			}
		}
	}
}

func TestSMTPTemplate(t *testing.T) {
	for _, size := range []int{0, 100, 2048, 2049, 2050, 50 * 1024} {
		tm := newSMTPTemplate("a@x.test", "b@sink.test", "abc123", size, time.Now())
		tm.put(42)
		msg := tm.buf
		if !bytes.HasSuffix(msg, []byte("\r\n.\r\n")) {
			t.Fatalf("size %d: no end-of-data", size)
		}
		msg = msg[:len(msg)-3]
		if size >= 400 && len(msg) != size {
			t.Fatalf("size %d: message is %d bytes", size, len(msg))
		}
		if bytes.Contains(bytes.ReplaceAll(msg, []byte("\r\n"), nil), []byte("\n")) ||
			bytes.Contains(bytes.ReplaceAll(msg, []byte("\r\n"), nil), []byte("\r")) {
			t.Fatalf("size %d: bare CR or LF", size)
		}
		m, err := mail.ReadMessage(bytes.NewReader(msg))
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		if got := m.Header.Get("Subject"); got != "bench 0000000042 abc123" {
			t.Fatalf("Subject = %q", got)
		}
		if got := m.Header.Get("Message-ID"); got != "<0000000042.abc123@sluice-bench.invalid>" {
			t.Fatalf("Message-ID = %q", got)
		}
		if _, err := m.Header.Date(); err != nil {
			t.Fatalf("Date: %v", err)
		}
		for _, h := range []string{"From", "To"} {
			if _, err := mail.ParseAddress(m.Header.Get(h)); err != nil {
				t.Fatalf("%s: %v", h, err)
			}
		}
	}
}

func TestTracker(t *testing.T) {
	tr := NewTracker("run1", 3)
	tr.Reset(time.Now())
	tr.SetTarget(3)
	tr.record([]byte(" bench 0000000001 run1\r\n"), 10)
	tr.record([]byte(" bench 0000000001 run1\r\n"), 10) // duplicate
	tr.record([]byte(" bench 0000000002 run0\r\n"), 10) // other run
	tr.record([]byte(" bench 0000000009 run1\r\n"), 10) // out of range
	tr.record(nil, 10)                                  // no subject
	select {
	case <-tr.Done():
		t.Fatal("done too early")
	default:
	}
	tr.record([]byte(" bench 3 run1\n"), 10)
	select {
	case <-tr.Done():
	default:
		t.Fatal("not done")
	}
	st := tr.Stats()
	want := SinkStats{Total: 6, Distinct: 2, Duplicates: 1, Foreign: 2, Unidentified: 1, Bytes: 60}
	if st != want {
		t.Fatalf("stats %+v, want %+v", st, want)
	}
	if _, ok := tr.CompletedAfter(3); !ok {
		t.Fatal("CompletedAfter(3) not ok")
	}
}

func smtpCfg(target string, n, c, size int) SMTPConfig {
	return SMTPConfig{Target: target, N: n, C: c, Size: size, From: "a@x.test", To: "b@sink.test", IOTimeout: 10 * time.Second}
}

func TestSMTPThroughRelay(t *testing.T) {
	for _, tc := range []struct {
		impl       string
		size       int
		noPipeline bool
	}{
		{SinkRaw, 2048, false},
		{SinkGoSMTP, 2048, false},
		{SinkRaw, 50 * 1024, true},
	} {
		t.Run(tc.impl, func(t *testing.T) {
			ln := sinkListener(t)
			relay := startRelay(t, ln.Addr().String())
			cfg := smtpCfg(relay.addr, 200, 4, tc.size)
			cfg.NoPipelining = tc.noPipeline
			rep, err := RunSMTP(context.Background(), cfg,
				RunConfig{Sink: SinkConfig{Listener: ln, Impl: tc.impl}, Timeout: 30 * time.Second})
			if err != nil {
				t.Fatalf("RunSMTP: %v (report %+v)", err, rep)
			}
			if rep.Accepted != 200 || rep.Failed != 0 || len(rep.Errors) != 0 || !rep.OK {
				t.Fatalf("report: %+v", rep)
			}
			if !rep.E2EComplete || rep.SinkStats.Total != 200 || rep.SinkStats.Distinct != 200 ||
				rep.SinkStats.Duplicates != 0 || rep.SinkStats.Unidentified != 0 {
				t.Fatalf("sink: complete=%v %+v", rep.E2EComplete, rep.SinkStats)
			}
			if got := relay.received.Load(); got != 200 {
				t.Fatalf("relay received %d", got)
			}
			if rep.Latency.Count != 200 || rep.Latency.P50 <= 0 || rep.Latency.Max < rep.Latency.P99 {
				t.Fatalf("latency %+v", rep.Latency)
			}
			if rep.AcceptedPerSec <= 0 || rep.E2EPerSec <= 0 {
				t.Fatalf("rates %v %v", rep.AcceptedPerSec, rep.E2EPerSec)
			}
			wantBytes := int64(200 * tc.size)
			// the relay forwards the message unchanged
			if rep.SinkStats.Bytes != wantBytes {
				t.Fatalf("sink bytes %d, want %d", rep.SinkStats.Bytes, wantBytes)
			}
			var buf bytes.Buffer
			rep.WriteText(&buf)
			t.Logf("\n%s", buf.String())
		})
	}
}

func TestSMTPTempFailOnData(t *testing.T) {
	ln := sinkListener(t)
	relay := startRelay(t, ln.Addr().String())
	relay.onData = func() error {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
	}
	rep, err := RunSMTP(context.Background(), smtpCfg(relay.addr, 50, 3, 1000),
		RunConfig{Sink: SinkConfig{Listener: ln}, Timeout: 10 * time.Second})
	if !errors.Is(err, ErrRunFailed) {
		t.Fatalf("err = %v, want ErrRunFailed", err)
	}
	if rep.Accepted != 0 || rep.Failed != 50 || rep.Errors["EOM 451"] != 50 || len(rep.Errors) != 1 {
		t.Fatalf("report %+v", rep)
	}
	if !strings.Contains(rep.ErrorSamples["EOM 451"], "try later") {
		t.Fatalf("samples %v", rep.ErrorSamples)
	}
	if rep.SinkStats.Total != 0 || rep.OK {
		t.Fatalf("sink %+v ok=%v", rep.SinkStats, rep.OK)
	}
}

func TestSMTPRcptRejectedSomeSessionsReused(t *testing.T) {
	ln := sinkListener(t)
	relay := startRelay(t, ln.Addr().String())
	var n int64
	var mu = make(chan struct{}, 1)
	mu <- struct{}{}
	relay.onRcpt = func(string) error {
		<-mu
		n++
		reject := n%4 == 0
		mu <- struct{}{}
		if reject {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		return nil
	}
	rep, err := RunSMTP(context.Background(), smtpCfg(relay.addr, 100, 2, 500),
		RunConfig{Sink: SinkConfig{Listener: ln}, Timeout: 10 * time.Second})
	if !errors.Is(err, ErrRunFailed) {
		t.Fatalf("err = %v", err)
	}
	// go-smtp answers DATA with 502 after a rejected RCPT; the RCPT code is the one counted.
	if rep.Errors["RCPT 550"] != 25 || rep.Accepted != 75 || len(rep.Errors) != 1 {
		t.Fatalf("report %+v", rep)
	}
	if !rep.E2EComplete || rep.SinkStats.Distinct != 75 {
		t.Fatalf("sink: complete=%v %+v", rep.E2EComplete, rep.SinkStats)
	}
}

func TestSMTPSinkIncomplete(t *testing.T) {
	ln := sinkListener(t)
	relay := startRelay(t, ln.Addr().String())
	relay.drop = true
	start := time.Now()
	rep, err := RunSMTP(context.Background(), smtpCfg(relay.addr, 20, 2, 500),
		RunConfig{Sink: SinkConfig{Listener: ln}, Timeout: 500 * time.Millisecond})
	if !errors.Is(err, ErrRunFailed) || !strings.Contains(err.Error(), "sink received 0 of 20") {
		t.Fatalf("err = %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("did not honour -timeout")
	}
	if rep.Accepted != 20 || rep.E2EComplete {
		t.Fatalf("report %+v", rep)
	}
}

func TestSMTPTargetDown(t *testing.T) {
	ln := sinkListener(t)
	dead := sinkListener(t)
	addr := dead.Addr().String()
	dead.Close()
	rep, err := RunSMTP(context.Background(), smtpCfg(addr, 10, 2, 500),
		RunConfig{Sink: SinkConfig{Listener: ln}, Timeout: 10 * time.Second})
	if !errors.Is(err, ErrRunFailed) {
		t.Fatalf("err = %v", err)
	}
	if rep.Accepted != 0 || rep.Errors["connect error"] == 0 {
		t.Fatalf("report %+v", rep)
	}
}

func TestSMTPNoSink(t *testing.T) {
	ln := sinkListener(t) // a separate sink the relay delivers to, not watched by the run
	s, err := StartSinkOn(ln, SinkRaw, NewTracker("", 0))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	relay := startRelay(t, s.Addr)
	rep, err := RunSMTP(context.Background(), smtpCfg(relay.addr, 30, 3, 500), RunConfig{Timeout: 10 * time.Second})
	if err != nil || rep.Accepted != 30 || rep.SinkStats != nil || rep.E2EPerSec != 0 {
		t.Fatalf("err=%v report %+v", err, rep)
	}
	// The sink answers before it counts: poll for the last one.
	testutil.WaitFor(t, "the sink to count 30 messages", func() bool { return s.Tracker.Stats().Total >= 30 })
	if got := s.Tracker.Stats().Total; got != 30 {
		t.Fatalf("standalone sink got %d", got)
	}
}
