package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// fakeAPI implements the HTTP submission contract and delivers accepted
// messages asynchronously to the sink over one reused SMTP connection.
type fakeAPI struct {
	t        *testing.T
	key      string
	sink     string
	queue    chan apiMessage
	requests atomic.Int64
	mu       sync.Mutex
	sizes    map[int]int // batch size -> requests
	bad      atomic.Value
}

func newFakeAPI(t *testing.T, key, sink string) (*fakeAPI, *httptest.Server) {
	a := &fakeAPI{t: t, key: key, sink: sink, queue: make(chan apiMessage, 100000), sizes: map[int]int{}}
	srv := httptest.NewServer(a)
	done := make(chan struct{})
	go a.deliver(done)
	t.Cleanup(func() { srv.Close(); close(a.queue); <-done })
	return a, srv
}

func (a *fakeAPI) fail(format string, args ...any) {
	a.bad.CompareAndSwap(nil, fmt.Sprintf(format, args...))
}

func (a *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.requests.Add(1)
	if r.Method != http.MethodPost {
		a.fail("method %s", r.Method)
		http.Error(w, "method", http.StatusMethodNotAllowed)
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+a.key {
		http.Error(w, `{"error":"unauthorized"}`, http.StatusUnauthorized)
		return
	}
	if r.Header.Get("Content-Type") != "application/json" {
		a.fail("content-type %q", r.Header.Get("Content-Type"))
	}
	var msgs []apiMessage
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	switch r.URL.Path {
	case "/v1/messages":
		var m apiMessage
		if err := dec.Decode(&m); err != nil {
			a.fail("decode: %v", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		msgs = []apiMessage{m}
	case "/v1/messages/batch":
		var b struct {
			Messages []apiMessage `json:"messages"`
		}
		if err := dec.Decode(&b); err != nil {
			a.fail("decode: %v", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		msgs = b.Messages
	default:
		a.fail("path %s", r.URL.Path)
		http.NotFound(w, r)
		return
	}
	a.mu.Lock()
	a.sizes[len(msgs)]++
	a.mu.Unlock()
	for _, m := range msgs {
		if m.From != "a@x.test" || len(m.To) != 1 || m.To[0] != "b@sink.test" || !strings.HasPrefix(m.Subject, "bench ") {
			a.fail("bad message %+v", m)
		}
		a.queue <- m
	}
	w.WriteHeader(http.StatusAccepted)
	fmt.Fprint(w, `{"id":"x"}`)
}

func (a *fakeAPI) deliver(done chan struct{}) {
	defer close(done)
	var c *smtp.Client
	for m := range a.queue {
		if c == nil {
			var err error
			if c, err = smtp.Dial(a.sink); err != nil {
				a.fail("dial sink: %v", err)
				continue
			}
		}
		body := fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\n\r\n%s\r\n", m.From, m.To[0], m.Subject,
			strings.ReplaceAll(m.Text, "\n", "\r\n"))
		err := c.SendMail(m.From, m.To, strings.NewReader(body))
		if err != nil {
			a.fail("deliver: %v", err)
			c.Close()
			c = nil
		}
	}
	if c != nil {
		c.Quit()
	}
}

func httpCfg(url string, n, c, size, batch int) HTTPConfig {
	return HTTPConfig{Target: url, Key: "sekrit", N: n, C: c, Size: size, Batch: batch,
		From: "a@x.test", To: "b@sink.test", IOTimeout: 10 * time.Second}
}

func TestHTTPSingle(t *testing.T) {
	ln := sinkListener(t)
	api, srv := newFakeAPI(t, "sekrit", ln.Addr().String())
	rep, err := RunHTTP(context.Background(), httpCfg(srv.URL, 300, 8, 2048, 0),
		RunConfig{Sink: SinkConfig{Listener: ln}, Timeout: 20 * time.Second})
	if bad := api.bad.Load(); bad != nil {
		t.Fatal(bad)
	}
	if err != nil {
		t.Fatalf("RunHTTP: %v (%+v)", err, rep)
	}
	if rep.Accepted != 300 || rep.Requests != 300 || api.requests.Load() != 300 || rep.Latency.Count != 300 {
		t.Fatalf("report %+v, server saw %d requests", rep, api.requests.Load())
	}
	if !rep.E2EComplete || rep.SinkStats.Distinct != 300 || rep.SinkStats.Duplicates != 0 || rep.E2EPerSec <= 0 {
		t.Fatalf("sink complete=%v %+v", rep.E2EComplete, rep.SinkStats)
	}
}

func TestHTTPBatch(t *testing.T) {
	ln := sinkListener(t)
	api, srv := newFakeAPI(t, "sekrit", ln.Addr().String())
	rep, err := RunHTTP(context.Background(), httpCfg(srv.URL, 250, 4, 300, 20),
		RunConfig{Sink: SinkConfig{Listener: ln, Impl: SinkGoSMTP}, Timeout: 20 * time.Second})
	if bad := api.bad.Load(); bad != nil {
		t.Fatal(bad)
	}
	if err != nil {
		t.Fatalf("RunHTTP: %v (%+v)", err, rep)
	}
	// 12 full batches of 20 and one of 10
	if rep.Accepted != 250 || rep.Requests != 13 || rep.Latency.Count != 13 {
		t.Fatalf("report %+v", rep)
	}
	api.mu.Lock()
	sizes := fmt.Sprint(api.sizes)
	api.mu.Unlock()
	if sizes != "map[10:1 20:12]" {
		t.Fatalf("batch sizes %s", sizes)
	}
	if !rep.E2EComplete || rep.SinkStats.Distinct != 250 {
		t.Fatalf("sink complete=%v %+v", rep.E2EComplete, rep.SinkStats)
	}
}

func TestHTTPUnauthorized(t *testing.T) {
	ln := sinkListener(t)
	_, srv := newFakeAPI(t, "other-key", ln.Addr().String())
	rep, err := RunHTTP(context.Background(), httpCfg(srv.URL, 40, 4, 100, 0),
		RunConfig{Sink: SinkConfig{Listener: ln}, Timeout: 5 * time.Second})
	if !errors.Is(err, ErrRunFailed) {
		t.Fatalf("err = %v", err)
	}
	if rep.Accepted != 0 || rep.Errors["HTTP 401"] != 40 || !strings.Contains(rep.ErrorSamples["HTTP 401"], "unauthorized") {
		t.Fatalf("report %+v", rep)
	}
}

func TestHTTPTemplate(t *testing.T) {
	cfg := httpCfg("http://x", 1, 1, 200, 0)
	text := string(bodyText(200))
	for _, k := range []int{0, 1, 7} {
		tm, err := newHTTPTemplate(&cfg, "r1", text, k)
		if err != nil {
			t.Fatal(err)
		}
		for i := range tm.slots {
			tm.putSlot(i, int64(100+i))
		}
		var got []apiMessage
		if k == 0 {
			var m apiMessage
			if err := json.Unmarshal(tm.buf, &m); err != nil {
				t.Fatal(err)
			}
			got = []apiMessage{m}
		} else {
			var b struct{ Messages []apiMessage }
			if err := json.Unmarshal(tm.buf, &b); err != nil {
				t.Fatal(err)
			}
			got = b.Messages
		}
		for i, m := range got {
			if want := fmt.Sprintf("bench %010d r1", 100+i); m.Subject != want || len(m.Text) != 200 {
				t.Fatalf("k=%d item %d: subject %q text %d bytes", k, i, m.Subject, len(m.Text))
			}
		}
	}
}

// TestHTTPLatencyLogUnwritable: a latency log that cannot be written is
// refused before the first request, not after the run (which would lose
// the run's report and leave its messages in the relay).
func TestHTTPLatencyLogUnwritable(t *testing.T) {
	ln := sinkListener(t)
	api, srv := newFakeAPI(t, "sekrit", ln.Addr().String())
	cfg := httpCfg(srv.URL, 50, 2, 64, 0)
	cfg.LatencyLog = filepath.Join(t.TempDir(), "no-such-dir", "lat.txt")
	_, err := RunHTTP(context.Background(), cfg, RunConfig{Sink: SinkConfig{Listener: ln}, Timeout: 20 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "latency log") {
		t.Fatalf("err = %v, want a latency log error", err)
	}
	if n := api.requests.Load(); n != 0 {
		t.Fatalf("%d requests sent before the error, want 0", n)
	}
}

// TestHTTPRateTooLow: a rate whose schedule overflows time.Duration is
// refused, not run with wrapped send times (latencies of 9e12 ms).
func TestHTTPRateTooLow(t *testing.T) {
	cfg := httpCfg("http://127.0.0.1:1", 3, 1, 64, 0)
	cfg.Rate = 1e-12
	if _, err := RunHTTP(context.Background(), cfg, RunConfig{Timeout: time.Second}); err == nil || !strings.Contains(err.Error(), "too low") {
		t.Fatalf("err = %v, want a too-low rate error", err)
	}
}

// TestHTTPLatencyLog: an open-loop run with a latency log writes one line
// per accepted request, in start order, each start on the schedule.
func TestHTTPLatencyLog(t *testing.T) {
	ln := sinkListener(t)
	api, srv := newFakeAPI(t, "sekrit", ln.Addr().String())
	cfg := httpCfg(srv.URL, 200, 4, 256, 0)
	cfg.Rate = 2000
	cfg.LatencyLog = filepath.Join(t.TempDir(), "lat.txt")
	rep, err := RunHTTP(context.Background(), cfg, RunConfig{Sink: SinkConfig{Listener: ln}, Timeout: 20 * time.Second})
	if bad := api.bad.Load(); bad != nil {
		t.Fatal(bad)
	}
	if err != nil {
		t.Fatalf("RunHTTP: %v (%+v)", err, rep)
	}
	data, err := os.ReadFile(cfg.LatencyLog)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 200 {
		t.Fatalf("%d lines, want 200", len(lines))
	}
	var first, prev int64
	for i, l := range lines {
		var at, us int64
		if _, err := fmt.Sscanf(l, "%d %d", &at, &us); err != nil {
			t.Fatalf("line %d %q: %v", i, l, err)
		}
		if i == 0 {
			first = at
		}
		if at < prev || us < 0 {
			t.Fatalf("line %d %q: out of order or negative (previous start %d)", i, l, prev)
		}
		// request i is due at start + i/Rate: 0.5 ms apart
		if want := int64(i) * int64(time.Second) / 2000; at-first != want {
			t.Fatalf("line %d starts %d ns after the first, want %d", i, at-first, want)
		}
		prev = at
	}
}
