package httpapi

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/token"
)

// benchBody is a 2 KB message in the load generator's shape.
func benchBody(b *testing.B) []byte {
	m := map[string]any{
		"from": "bench@example.com", "to": []string{"sink@dest.test"}, "subject": "bench 000001 run",
		"text": strings.Repeat("The quick brown fox jumps over the lazy dog 0123456789.\n", 34),
	}
	data, err := json.Marshal(m)
	if err != nil {
		b.Fatal(err)
	}
	if len(data) < 1900 || len(data) > 2200 {
		b.Fatalf("body is %d bytes", len(data))
	}
	return data
}

// benchPost posts body from 64 concurrent keep-alive clients and reports
// accepted messages per second and latency percentiles. Acceptance only:
// the queue is stopped, so the numbers are the API's, fsync included.
func benchPost(b *testing.B, path string, body []byte, perReq int) {
	benchPostWith(b, path, body, perReq, envOptions{}, func(e *env) string { return e.sendKey })
}

// benchPostWith is benchPost with more env options (tokens) and the
// bearer credential key returns.
func benchPostWith(b *testing.B, path string, body []byte, perReq int, o envOptions, key func(*env) string) {
	o.noDelivery, o.quiet, o.stageConfig = true, true, func(s *testStage) { s.noRecord = true }
	e := newEnv(b, o)
	bearer := "Bearer " + key(e)
	const clients = 64
	b.SetParallelism((clients + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	tr := &http.Transport{MaxIdleConnsPerHost: 2 * clients, MaxConnsPerHost: 2 * clients, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	var (
		mu   sync.Mutex
		lats []time.Duration
	)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		var mine []time.Duration
		rd := bytes.NewReader(nil)
		for pb.Next() {
			rd.Reset(body)
			req, _ := http.NewRequest("POST", e.url+path, rd)
			req.ContentLength = int64(len(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", bearer)
			t0 := time.Now()
			res, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.StatusCode != http.StatusAccepted {
				b.Errorf("status %d", res.StatusCode)
				return
			}
			mine = append(mine, time.Since(t0))
		}
		mu.Lock()
		lats = append(lats, mine...)
		mu.Unlock()
	})
	el := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	if len(lats) == 0 {
		return
	}
	sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
	pct := func(p float64) float64 {
		return float64(lats[int(p*float64(len(lats)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(float64(len(lats)*perReq)/el.Seconds(), "msgs/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(pct(0.90), "p90-ms")
	// Process CPU (server, client and spool together) per message: the
	// capacity measure that other load on the machine does not distort.
	b.ReportMetric(float64(cpu)/float64(time.Microsecond)/float64(len(lats)*perReq), "cpu-us/msg")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func BenchmarkPostMessage(b *testing.B) {
	benchPost(b, "/v1/messages", benchBody(b), 1)
}

// BenchmarkPostMessageToken is BenchmarkPostMessage with a token instead
// of an API key (issue 17: within 5% of the API key's throughput).
func BenchmarkPostMessageToken(b *testing.B) {
	k := token.GenerateKey()
	v, err := token.NewVerifier([]*token.PublicKey{k.Public()}, 0, nil)
	if err != nil {
		b.Fatal(err)
	}
	iss := token.NewIssuer(k, 0)
	benchPostWith(b, "/v1/messages", benchBody(b), 1, envOptions{tokIss: iss, tokVer: v}, func(*env) string {
		tok, _, err := iss.Issue(token.IssueOptions{Tenant: "acme", MaxRcpts: 10})
		if err != nil {
			b.Fatal(err)
		}
		return tok
	})
}

func BenchmarkPostBatch(b *testing.B) {
	one := benchBody(b)
	const n = 100
	var buf bytes.Buffer
	buf.WriteString(`{"messages":[`)
	for i := 0; i < n; i++ {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.Write(one)
	}
	buf.WriteString(`]}`)
	benchPost(b, "/v1/messages/batch", buf.Bytes(), n)
}
