package loadgen

import (
	"context"
	"math"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// TestHTTPOpenLoopCountsStall: in an open-loop run a stall in the server shows
// in the latency of every request scheduled during it, measured from the
// scheduled send time. One client, 10 requests at 100/s (due at 0, 10, ...,
// 90 ms); the server holds the first request for at least 300 ms. Request i
// cannot be answered before the first, so its latency is at least
// stall - i*10ms >= 210 ms: every sample, not only the first, must show it. A
// closed-loop run (latency from the send) would report ~0 for requests 2..10.
func TestHTTPOpenLoopCountsStall(t *testing.T) {
	const stall = 300 * time.Millisecond
	var n atomic.Int64
	var held atomic.Int64 // how long the first request was actually held
	rep := runOpenLoop(t, 10, 1, 100, func() {
		if n.Add(1) == 1 {
			t0 := time.Now()
			time.Sleep(stall)
			held.Store(int64(time.Since(t0)))
		}
	})
	if rep.Accepted != 10 || rep.Requests != 10 || rep.Latency.Count != 10 || rep.Rate != 100 ||
		rep.SendLag == nil || rep.SendLag.Count != 10 {
		t.Fatalf("report %+v", rep)
	}
	floor := ms(time.Duration(held.Load()) - 90*time.Millisecond)
	if held.Load() < int64(stall) || floor <= 0 {
		t.Fatalf("server held the first request %v", time.Duration(held.Load()))
	}
	// With one client, request i is sent only after the first is answered:
	// at least stall - i*10ms late; the p50 of the lags (5th smallest)
	// belongs to a request due at most 90 ms in.
	if lag := ms(time.Duration(held.Load()) - 90*time.Millisecond); rep.SendLag.P50 < lag {
		t.Fatalf("send lag %+v: want p50 >= %.1f ms", *rep.SendLag, lag)
	}
	// Closed-loop, 9 of 10 samples would be near 0 and so would the p50.
	if rep.Latency.P50 < floor || rep.Latency.Mean < floor {
		t.Fatalf("latency %+v: every sample should be >= %.1f ms (the stall minus the request's schedule offset)", rep.Latency, floor)
	}
}

// TestHTTPOpenLoopPaces: requests are not sent before their scheduled time, so
// 21 requests at 200/s over 3 clients take at least 100 ms from start to the
// last answer (request 20 is due at 100 ms), however fast the server is.
func TestHTTPOpenLoopPaces(t *testing.T) {
	var n atomic.Int64
	rep := runOpenLoop(t, 21, 3, 200, func() { n.Add(1) })
	if rep.Accepted != 21 || n.Load() != 21 {
		t.Fatalf("report %+v, server saw %d", rep, n.Load())
	}
	if rep.AcceptSeconds < 0.1 {
		t.Fatalf("21 requests at 200/s answered within %.4fs: not paced", rep.AcceptSeconds)
	}
}

// runOpenLoop runs n requests at rate over c clients against a server that
// calls each and answers 202; it fails the test unless the run succeeds.
func runOpenLoop(t *testing.T, n, c int, rate float64, each func()) *Report {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		each()
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	cfg := httpCfg(srv.URL, n, c, 100, 0)
	cfg.Rate = rate
	rep, err := RunHTTP(context.Background(), cfg, RunConfig{Timeout: 20 * time.Second})
	if err != nil {
		t.Fatalf("RunHTTP: %v (%+v)", err, rep)
	}
	return rep
}

func TestHTTPRateInvalid(t *testing.T) {
	for _, r := range []float64{-1, math.Inf(1), math.NaN()} {
		cfg := httpCfg("http://127.0.0.1:1", 1, 1, 10, 0)
		cfg.Rate = r
		if _, err := RunHTTP(context.Background(), cfg, RunConfig{}); err == nil {
			t.Errorf("rate %v: no error", r)
		}
	}
}
