package tracking

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

// benchHTML is a ~50 KB newsletter with 50 links: nested tables, inline
// styles, entities, images, a comment, mailto and fragment links.
func benchHTML() []byte {
	var b strings.Builder
	b.WriteString(`<!DOCTYPE html><html><head><meta charset="utf-8"><title>Weekly</title><style>td{font-family:Arial,sans-serif;color:#333}</style></head><body style="margin:0">` + "\n")
	b.WriteString(`<!-- preheader --><table width="100%" cellpadding="0" cellspacing="0"><tr><td align="center"><table width="600">` + "\n")
	for i := 0; b.Len() < 50<<10; i++ {
		if i < 48 {
			fmt.Fprintf(&b, `<tr><td style="padding:12px 24px;border-bottom:1px solid #eee"><table><tr><td><img src="https://cdn.shop.example/p/%d.jpg" width="120" alt="Product %d"></td>`+
				`<td><h3 style="margin:0 0 6px">Caf&eacute; product n&deg;%d &amp; more</h3><p style="margin:0 0 8px">Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris.</p>`+
				`<a href="https://shop.example/p/%d?utm_source=newsletter&amp;utm_medium=email&amp;utm_campaign=weekly-48" style="color:#06c">See the offer</a></td></tr></table></td></tr>`+"\n", i, i, i, i)
		} else {
			b.WriteString(`<tr><td style="padding:12px 24px"><p>Filler paragraph text to reach the size of a real newsletter, with <b>bold</b>, <i>italic</i> and &nbsp; entities &mdash; nothing else.</p></td></tr>` + "\n")
		}
	}
	b.WriteString(`<tr><td><a href="https://shop.example/account">Account</a> &middot; <a href="mailto:help@shop.example">Help</a> &middot; <a href="#top">Top</a> &middot; <a href="https://shop.example/unsubscribe?u=1">Unsubscribe</a></td></tr>`)
	b.WriteString(`<tr><td><a href="https://shop.example/privacy">Privacy</a></td></tr></table></td></tr></table></body></html>`)
	return []byte(b.String())
}

// BenchmarkRewriteHTML: click links (signed with HMAC-SHA256) and the
// pixel in a 50 KB body with 50 links. Target: at most 1 ms per body.
func BenchmarkRewriteHTML(b *testing.B) {
	src := benchHTML()
	kr := testRing(b, testKey(b, "k1"))
	base := sample
	link := func(u string) string {
		l := base
		l.URL = u
		return testBase + "/t/c/" + kr.Sign(&l)
	}
	pixelLink := base
	pixelLink.Kind = KindOpen
	pixel := `<img src="` + testBase + "/t/o/" + kr.Sign(&pixelLink) + `" width="1" height="1" alt="">`
	out, n := RewriteHTML(nil, src, HTMLOptions{Link: link, Pixel: pixel})
	if n != 50 {
		b.Fatalf("%d links tracked, want 50 (body %d bytes)", n, len(src))
	}
	b.ReportMetric(float64(len(src)), "bytes-in")
	b.SetBytes(int64(len(src)))
	b.ResetTimer()
	cpu := cpuTime()
	for b.Loop() {
		out, _ = RewriteHTML(out[:0], src, HTMLOptions{Link: link, Pixel: pixel})
	}
	reportCPU(b, cpu)
}

// cpuTime is the process's user+system CPU time. On a loaded machine
// (other jobs on the same cores) CPU time per operation is a steadier
// figure than wall time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the CPU time since start per b.N as cpu-ms/op.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/float64(time.Millisecond)/float64(b.N), "cpu-ms/op")
}

// BenchmarkRewriteMessage: the whole Rewrite of a message whose 50 KB
// HTML part is quoted-printable (decode, rewrite, encode, splice).
func BenchmarkRewriteMessage(b *testing.B) {
	tr := newTestTracker(b, Options{})
	html := qp(benchHTML())
	raw := "From: a@acme.example\nTo: bob@example.org\nSubject: weekly\nMIME-Version: 1.0\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n" +
		strings.ReplaceAll(string(html), "\r\n", "\n")
	m := testMessage(b, raw)
	body := m.Body
	yes := true
	b.SetBytes(int64(len(body)))
	cpu := cpuTime()
	for b.Loop() {
		m.Body = body
		m.Track = &pipeline.Track{Opens: &yes, Clicks: &yes}
		if err := tr.Rewrite(context.Background(), m); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu)
}

// BenchmarkEndpoints drives the tracking endpoints over real loopback
// HTTP/1.1 keep-alive connections (client and server on the same
// machine), 32 concurrent clients, and reports requests per second and
// the 99th percentile latency. "repeat" fetches one pixel and one click
// link over and over (deduplicated: no event written after the first);
// "distinct" gives every request its own recipient, so every request
// writes an event to the spool.
func BenchmarkEndpoints(b *testing.B) {
	for _, mode := range []string{"repeat", "distinct"} {
		b.Run(mode, func(b *testing.B) {
			e := newEnvB(b)
			kr := e.tr.opts.Load().Keys
			const clients = 32
			tr := &http.Transport{MaxIdleConns: clients, MaxIdleConnsPerHost: clients, IdleConnTimeout: time.Minute}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			var mu sync.Mutex
			var lat []time.Duration
			var seq int64
			var seqMu sync.Mutex
			next := func() int64 { seqMu.Lock(); defer seqMu.Unlock(); seq++; return seq }
			b.SetParallelism(clients / max(1, runtimeProcs()))
			start := time.Now()
			cpu := cpuTime()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				mine := make([]time.Duration, 0, 1024)
				for pb.Next() {
					n := next()
					l := sample
					if mode == "distinct" {
						l.Recipient = fmt.Sprintf("user%d@example.org", n)
					}
					path := ""
					if n%2 == 0 {
						l.Kind = KindOpen
						l.URL = ""
						path = "/t/o/" + kr.Sign(&l)
					} else {
						path = "/t/c/" + kr.Sign(&l)
					}
					req, _ := http.NewRequest("GET", e.srv.URL+path, nil)
					req.Host = "t.acme.test"
					req.Header.Set("User-Agent", browserUA)
					t0 := time.Now()
					resp, err := c.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					mine = append(mine, time.Since(t0))
					if resp.StatusCode != 200 && resp.StatusCode != 302 {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			})
			elapsed := time.Since(start)
			b.StopTimer()
			reportCPU(b, cpu) // client and server together
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			if len(lat) > 0 {
				b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "req/s")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			}
		})
	}
}

// BenchmarkHandler: the tracking handler alone (verify the token,
// classify, dedupe, answer), without the network and the HTTP server:
// the server-side share of BenchmarkEndpoints/repeat.
func BenchmarkHandler(b *testing.B) {
	e := newEnvB(b)
	kr := e.tr.opts.Load().Keys
	l := sample
	click := httptest.NewRequest("GET", "/t/c/"+kr.Sign(&l), nil)
	l.Kind, l.URL = KindOpen, ""
	open := httptest.NewRequest("GET", "/t/o/"+kr.Sign(&l), nil)
	for _, r := range []*http.Request{click, open} {
		r.Host = "t.acme.test"
		r.Header.Set("User-Agent", browserUA)
	}
	cpu := cpuTime()
	i := 0
	for b.Loop() {
		w := httptest.NewRecorder()
		r := click
		if i++; i%2 == 0 {
			r = open
		}
		e.tr.ServeHTTP(w, r)
		if w.Code != 200 && w.Code != 302 {
			b.Fatal(w.Code)
		}
	}
	reportCPU(b, cpu)
}
