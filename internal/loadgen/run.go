package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"slices"
	"strings"
	"time"
)

// SinkConfig says where to run the counting sink during a run.
type SinkConfig struct {
	Addr string // "" = no sink: end-to-end figures are not measured
	Impl string // SinkRaw (default) or SinkGoSMTP
	// Listener, if set, is used instead of listening on Addr (tests: port 0).
	// The run closes it.
	Listener net.Listener
}

// RunConfig holds what every run has in common.
type RunConfig struct {
	Sink    SinkConfig
	Timeout time.Duration // whole run: sending plus waiting for the sink
}

// Report is the outcome of one run. Rates are messages per second.
type Report struct {
	Mode        string `json:"mode"`
	Target      string `json:"target"`
	Sink        string `json:"sink,omitempty"`
	SinkImpl    string `json:"sink_impl,omitempty"`
	RunID       string `json:"run_id"`
	N           int    `json:"n"`
	Concurrency int    `json:"concurrency"`
	Size        int    `json:"size"`
	Batch       int    `json:"batch,omitempty"`
	// Rate is the offered load of an open-loop HTTP run, requests per second
	// (0: closed-loop). AcceptedPerSec is then the achieved rate in messages.
	Rate float64 `json:"rate,omitempty"`

	Attempted int64            `json:"attempted"`
	Accepted  int64            `json:"accepted"`
	Failed    int64            `json:"failed"`
	NotSent   int64            `json:"not_sent"`
	Requests  int64            `json:"requests"`
	Errors    map[string]int64 `json:"errors,omitempty"`
	// ErrorSamples holds the first reply line (or error text) seen per error key.
	ErrorSamples map[string]string `json:"error_samples,omitempty"`

	AcceptSeconds  float64    `json:"accept_seconds"`   // start -> last accepted reply
	AcceptedPerSec float64    `json:"accepted_per_sec"` // accepted / accept_seconds
	E2ESeconds     float64    `json:"e2e_seconds"`      // start -> sink has every accepted message
	E2EPerSec      float64    `json:"e2e_per_sec"`      // accepted / e2e_seconds
	E2EComplete    bool       `json:"e2e_complete"`     // the sink got every accepted message in time
	SinkStats      *SinkStats `json:"sink_stats,omitempty"`

	// Latency is per message for SMTP (first byte of MAIL to the reply after
	// the final dot) and per request for HTTP: from the send, or in an
	// open-loop run (Rate > 0) from the request's scheduled send time.
	Latency LatencySummary `json:"latency"`
	// SendLag (open-loop runs only) is how late requests left the
	// generator after their scheduled time: all clients busy (the server is
	// behind) or the generator itself starved of CPU. Latency includes it.
	SendLag *LatencySummary `json:"send_lag,omitempty"`

	OK bool `json:"ok"`
}

// ErrRunFailed is returned (wrapped) when a run had failed messages or the sink
// did not receive every accepted message in time. The report is still valid.
var ErrRunFailed = errors.New("benchmark run failed")

// RunSMTP runs the SMTP benchmark.
func RunSMTP(ctx context.Context, cfg SMTPConfig, rc RunConfig) (*Report, error) {
	if err := checkCommon(cfg.N, cfg.C, cfg.Size); err != nil {
		return nil, err
	}
	if cfg.From == "" || cfg.To == "" || cfg.Target == "" {
		return nil, errors.New("smtp: -target, -from and -to must be set")
	}
	if cfg.Helo == "" {
		cfg.Helo = "sluice-bench.invalid"
	}
	if cfg.IOTimeout <= 0 {
		cfg.IOTimeout = 60 * time.Second
	}
	rep := &Report{Mode: "smtp", Target: cfg.Target, N: cfg.N, Concurrency: cfg.C, Size: cfg.Size}
	return run(ctx, rep, rc, func(ctx context.Context, runID string, onStart func(time.Time)) (*genResult, error) {
		return runSMTP(ctx, cfg, runID, onStart), nil
	})
}

// RunHTTP runs the HTTP API benchmark.
func RunHTTP(ctx context.Context, cfg HTTPConfig, rc RunConfig) (*Report, error) {
	if err := checkCommon(cfg.N, cfg.C, cfg.Size); err != nil {
		return nil, err
	}
	if cfg.Batch < 0 {
		return nil, errors.New("-batch must be >= 0")
	}
	if cfg.Rate < 0 || math.IsNaN(cfg.Rate) || math.IsInf(cfg.Rate, 0) {
		return nil, errors.New("-rate must be a finite number >= 0 (requests per second; 0 = closed-loop)")
	}
	if cfg.Rate > 0 {
		// The last request is due (requests-1)/Rate seconds after the start;
		// a schedule past time.Duration's range would overflow into
		// nonsense send times and latencies of 9e12 ms.
		requests := float64((cfg.N + max(cfg.Batch, 1) - 1) / max(cfg.Batch, 1))
		if (requests-1)/cfg.Rate > float64(math.MaxInt64)/float64(time.Second)/2 {
			return nil, fmt.Errorf("-rate %g is too low: %.0f requests would take %.3g s", cfg.Rate, requests, (requests-1)/cfg.Rate)
		}
	}
	if cfg.Target == "" || cfg.From == "" || cfg.To == "" {
		return nil, errors.New("http: -target, -from and -to must be set")
	}
	if cfg.IOTimeout <= 0 {
		cfg.IOTimeout = 60 * time.Second
	}
	if cfg.LatencyLog != "" {
		// Fail before sending anything: the log is written after the run,
		// and an unwritable path found then would cost the run its report.
		f, err := os.OpenFile(cfg.LatencyLog, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return nil, fmt.Errorf("latency log: %w", err)
		}
		f.Close()
	}
	rep := &Report{Mode: "http", Target: cfg.Target, N: cfg.N, Concurrency: cfg.C, Size: cfg.Size, Batch: cfg.Batch, Rate: cfg.Rate}
	return run(ctx, rep, rc, func(ctx context.Context, runID string, onStart func(time.Time)) (*genResult, error) {
		return runHTTP(ctx, cfg, runID, onStart)
	})
}

func checkCommon(n, c, size int) error {
	switch {
	case n <= 0:
		return errors.New("-n must be > 0")
	case c <= 0:
		return errors.New("-c must be > 0")
	case size < 0:
		return errors.New("-size must be >= 0")
	}
	return nil
}

type generator func(ctx context.Context, runID string, onStart func(time.Time)) (*genResult, error)

func run(ctx context.Context, rep *Report, rc RunConfig, gen generator) (*Report, error) {
	if rc.Timeout <= 0 {
		rc.Timeout = 120 * time.Second
	}
	rep.RunID = NewRunID()
	tr := NewTracker(rep.RunID, rep.N)
	if rc.Sink.Addr != "" || rc.Sink.Listener != nil {
		impl := rc.Sink.Impl
		if impl == "" {
			impl = SinkRaw
		}
		var sink *Sink
		var err error
		if rc.Sink.Listener != nil {
			sink, err = StartSinkOn(rc.Sink.Listener, impl, tr)
		} else {
			sink, err = StartSink(rc.Sink.Addr, impl, tr)
		}
		if err != nil {
			return nil, err
		}
		defer sink.Close()
		rep.Sink, rep.SinkImpl = sink.Addr, impl
	}
	ctx, cancel := context.WithTimeout(ctx, rc.Timeout)
	defer cancel()

	res, err := gen(ctx, rep.RunID, tr.Reset)
	if err != nil {
		return nil, err
	}
	rep.Attempted, rep.Accepted, rep.Requests = res.attempted, res.accepted, res.requests
	rep.NotSent = int64(rep.N) - res.attempted
	rep.Failed = res.attempted - res.accepted
	rep.Errors, rep.ErrorSamples = res.errors, res.samples
	rep.Latency = Summarize(res.latencies)
	if len(res.sendLags) > 0 {
		lag := Summarize(res.sendLags)
		rep.SendLag = &lag
	}
	if res.accepted > 0 {
		rep.AcceptSeconds = secs(res.acceptElapsed)
		rep.AcceptedPerSec = rate(res.accepted, res.acceptElapsed)
	}

	if rep.Sink != "" {
		tr.SetTarget(res.accepted)
		select {
		case <-tr.Done():
			rep.E2EComplete = true
		case <-ctx.Done():
		}
		if d, ok := tr.CompletedAfter(res.accepted); ok && rep.E2EComplete && res.accepted > 0 {
			rep.E2ESeconds = secs(d)
			rep.E2EPerSec = rate(res.accepted, d)
		}
		st := tr.Stats() // what the sink had when the run completed (or timed out)
		rep.SinkStats = &st
	}

	var problems []string
	if rep.Failed > 0 {
		problems = append(problems, fmt.Sprintf("%d of %d messages not accepted", rep.Failed, rep.Attempted))
	}
	if rep.NotSent > 0 {
		problems = append(problems, fmt.Sprintf("%d messages never sent", rep.NotSent))
	}
	if rep.Sink != "" && !rep.E2EComplete {
		problems = append(problems, fmt.Sprintf("sink received %d of %d accepted messages within %s",
			rep.SinkStats.Distinct+rep.SinkStats.Unidentified, rep.Accepted, rc.Timeout))
	}
	rep.OK = len(problems) == 0
	if !rep.OK {
		return rep, fmt.Errorf("%w: %s", ErrRunFailed, strings.Join(problems, "; "))
	}
	return rep, nil
}

func secs(d time.Duration) float64 { return math.Round(d.Seconds()*1e4) / 1e4 }

func rate(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return math.Round(float64(n)/d.Seconds()*10) / 10
}

// WriteJSON writes the report as one JSON line.
func (r *Report) WriteJSON(w io.Writer) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	_, err = w.Write(b)
	return err
}

// WriteText writes a human-readable report.
func (r *Report) WriteText(w io.Writer) {
	fmt.Fprintf(w, "%s -> %s: n=%d c=%d size=%d", r.Mode, r.Target, r.N, r.Concurrency, r.Size)
	if r.Mode == "http" {
		fmt.Fprintf(w, " batch=%d requests=%d", r.Batch, r.Requests)
		if r.Rate > 0 {
			fmt.Fprintf(w, " open-loop rate=%g req/s", r.Rate)
		}
	}
	fmt.Fprintf(w, " run=%s\n", r.RunID)
	fmt.Fprintf(w, "  accepted     %d/%d in %.3fs = %.1f msgs/s\n", r.Accepted, r.N, r.AcceptSeconds, r.AcceptedPerSec)
	switch {
	case r.Sink == "":
		fmt.Fprintf(w, "  end-to-end   not measured (no sink)\n")
	case r.E2EComplete:
		fmt.Fprintf(w, "  end-to-end   %d in %.3fs = %.1f msgs/s (sink %s, %s)\n", r.Accepted, r.E2ESeconds, r.E2EPerSec, r.Sink, r.SinkImpl)
	default:
		fmt.Fprintf(w, "  end-to-end   INCOMPLETE: sink has %d of %d accepted (sink %s)\n",
			r.SinkStats.Distinct+r.SinkStats.Unidentified, r.Accepted, r.Sink)
	}
	if s := r.SinkStats; s != nil {
		fmt.Fprintf(w, "  sink count   %d total, %d distinct, %d duplicates, %d from other runs, %d unidentified\n",
			s.Total, s.Distinct, s.Duplicates, s.Foreign, s.Unidentified)
	}
	what := "per message, MAIL -> 250 after DATA"
	if r.Mode == "http" {
		what = "per request"
		if r.Rate > 0 {
			what = "per request, from its scheduled send time"
		}
	}
	l := r.Latency
	fmt.Fprintf(w, "  latency      p50 %.2fms  p90 %.2fms  p99 %.2fms  p99.9 %.2fms  max %.2fms  mean %.2fms (%s, %d samples)\n",
		l.P50, l.P90, l.P99, l.P999, l.Max, l.Mean, what, l.Count)
	if r.Rate > 0 {
		fmt.Fprintf(w, "  open-loop    offered %g req/s (%g msgs/s), achieved %.1f msgs/s accepted\n",
			r.Rate, r.Rate*float64(max(r.Batch, 1)), r.AcceptedPerSec)
	}
	if l := r.SendLag; l != nil {
		fmt.Fprintf(w, "  send lag     p50 %.2fms  p99 %.2fms  max %.2fms (how late requests left: all clients busy, or the generator short of CPU)\n",
			l.P50, l.P99, l.Max)
	}
	if len(r.Errors) == 0 {
		fmt.Fprintf(w, "  errors       none\n")
	} else {
		keys := make([]string, 0, len(r.Errors))
		for k := range r.Errors {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "  errors       %-14s %d  (e.g. %q)\n", k, r.Errors[k], r.ErrorSamples[k])
		}
	}
	if r.NotSent > 0 {
		fmt.Fprintf(w, "  not sent     %d\n", r.NotSent)
	}
}
