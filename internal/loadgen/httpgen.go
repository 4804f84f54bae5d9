package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// HTTPConfig configures the HTTP API load generator.
type HTTPConfig struct {
	Target    string // base URL, e.g. http://127.0.0.1:8025
	Key       string // bearer token
	N         int    // messages in total
	C         int    // concurrent keep-alive clients
	Size      int    // bytes of "text" per message
	Batch     int    // 0: POST /v1/messages; N>0: POST /v1/messages/batch with N messages
	From, To  string
	IOTimeout time.Duration // per request
	// Rate, if > 0, makes the run open-loop: requests (not messages; a batch
	// request counts once) are scheduled at Rate per second over all clients,
	// request i at start + i/Rate, and a request's latency is measured from its
	// scheduled time, not from when a client got round to sending it. A stall
	// in the server then shows in the latency of every request scheduled during
	// it (no coordinated omission). When all C clients are busy a request waits
	// for a free one, and that wait counts. 0 (the default) is closed-loop: each
	// client sends its next request as soon as the last one is answered, and
	// latency is measured from the send.
	Rate float64
	// LatencyLog, if set, is a file that gets one line per accepted request:
	// its start (scheduled time in open-loop mode, send time otherwise) in
	// Unix nanoseconds and its latency in microseconds, in start order, to
	// line up slow requests with the relay's log.
	LatencyLog string
}

type apiMessage struct {
	From    string   `json:"from"`
	To      []string `json:"to"`
	Subject string   `json:"subject"`
	Text    string   `json:"text"`
}

// newHTTPTemplate builds the JSON body for k messages (k=0: a single message
// object, k>=1: {"messages":[...k items...]}), with one sequence slot per message.
func newHTTPTemplate(cfg *HTTPConfig, runID string, text string, k int) (*template, error) {
	subj := "bench " + seqPlaceholder + " " + runID
	m := apiMessage{From: cfg.From, To: []string{cfg.To}, Subject: subj, Text: text}
	var body []byte
	var err error
	if k == 0 {
		body, err = json.Marshal(m)
	} else {
		ms := make([]apiMessage, k)
		for i := range ms {
			ms[i] = m
		}
		body, err = json.Marshal(struct {
			Messages []apiMessage `json:"messages"`
		}{ms})
	}
	if err != nil {
		return nil, err
	}
	t := &template{buf: body}
	needle := []byte(`"subject":"bench ` + seqPlaceholder)
	off := 0
	for {
		i := bytes.Index(body[off:], needle)
		if i < 0 {
			break
		}
		t.slots = append(t.slots, off+i+len(needle)-seqWidth)
		off += i + len(needle)
	}
	want := max(k, 1)
	if len(t.slots) != want {
		return nil, fmt.Errorf("http template: found %d subject slots, want %d", len(t.slots), want)
	}
	return t, nil
}

func runHTTP(ctx context.Context, cfg HTTPConfig, runID string, onStart func(time.Time)) (*genResult, error) {
	base := strings.TrimRight(cfg.Target, "/")
	url := base + "/v1/messages"
	per := 1
	if cfg.Batch > 0 {
		url = base + "/v1/messages/batch"
		per = cfg.Batch
	}
	text := string(bodyText(cfg.Size))
	// Check the templates build before starting anything.
	if _, err := newHTTPTemplate(&cfg, runID, text, cfg.Batch); err != nil {
		return nil, err
	}
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: cfg.IOTimeout, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        cfg.C * 2,
		MaxIdleConnsPerHost: cfg.C * 2,
		MaxConnsPerHost:     cfg.C,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: cfg.IOTimeout}
	auth := "Bearer " + cfg.Key

	var next atomic.Int64
	var wg sync.WaitGroup
	results := make([]*genResult, cfg.C)
	templates := make([]*template, cfg.C)
	for w := range templates {
		templates[w], _ = newHTTPTemplate(&cfg, runID, text, cfg.Batch)
	}
	start := time.Now()
	onStart(start)
	for w := 0; w < cfg.C; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			res := &genResult{latencies: make([]time.Duration, 0, cfg.N/per/cfg.C+8)}
			results[w] = res
			tmpl := templates[w]
			rd := bytes.NewReader(nil)
			var lastAccept time.Time
			for {
				end := next.Add(int64(per))
				first := end - int64(per) + 1
				if first > int64(cfg.N) {
					break
				}
				count := per
				body := tmpl
				if end > int64(cfg.N) { // last, partial batch
					count = int(int64(cfg.N) - first + 1)
					var err error
					if body, err = newHTTPTemplate(&cfg, runID, text, count); err != nil {
						res.addErr("template", err.Error())
						break
					}
				}
				if cfg.Batch > 0 {
					for i := 0; i < count; i++ {
						body.putSlot(i, first+int64(i))
					}
				} else {
					body.put(first)
				}
				var t0 time.Time
				if cfg.Rate > 0 {
					// request number (first-1)/per, due at start + that/Rate
					t0 = start.Add(time.Duration(float64((first-1)/int64(per)) / cfg.Rate * float64(time.Second)))
					if wait := time.Until(t0); wait > 0 {
						select {
						case <-time.After(wait):
						case <-ctx.Done():
						}
					}
				}
				if ctx.Err() != nil {
					break // deadline or interrupt: the rest counts as not sent
				}
				if cfg.Rate > 0 {
					res.sendLags = append(res.sendLags, max(time.Since(t0), 0))
				}
				res.attempted += int64(count)
				res.requests++
				rd.Reset(body.buf)
				req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, rd)
				if err != nil {
					addN(res, "request", err.Error(), count)
					continue
				}
				req.ContentLength = int64(len(body.buf))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", auth)
				if cfg.Rate <= 0 {
					t0 = time.Now()
				}
				resp, err := client.Do(req)
				if err != nil {
					key := "io error"
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						key = "io timeout"
					}
					addN(res, key, err.Error(), count)
					continue
				}
				var sample []byte
				if resp.StatusCode != http.StatusAccepted {
					sample, _ = io.ReadAll(io.LimitReader(resp.Body, 200))
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusAccepted {
					now := time.Now()
					res.accepted += int64(count)
					res.latencies = append(res.latencies, now.Sub(t0))
					if cfg.LatencyLog != "" {
						res.starts = append(res.starts, t0)
					}
					lastAccept = now
				} else {
					addN(res, "HTTP "+strconv.Itoa(resp.StatusCode), strings.TrimSpace(string(sample)), count)
				}
			}
			if !lastAccept.IsZero() {
				res.acceptElapsed = lastAccept.Sub(start)
			}
		}(w)
	}
	wg.Wait()
	total := &genResult{latencies: make([]time.Duration, 0, cfg.N/per+1)}
	for _, r := range results {
		total.merge(r)
	}
	if cfg.LatencyLog != "" {
		if err := writeLatencyLog(cfg.LatencyLog, results); err != nil {
			return nil, err
		}
	}
	return total, nil
}

// writeLatencyLog writes every accepted request's start (Unix ns) and
// latency (µs), sorted by start.
func writeLatencyLog(path string, results []*genResult) error {
	type row struct {
		at  time.Time
		lat time.Duration
	}
	var rows []row
	for _, r := range results {
		for i, at := range r.starts {
			rows = append(rows, row{at, r.latencies[i]})
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].at.Before(rows[j].at) })
	var b bytes.Buffer
	for _, r := range rows {
		fmt.Fprintf(&b, "%d %d\n", r.at.UnixNano(), r.lat.Microseconds())
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("latency log: %w", err)
	}
	return nil
}

// addN counts count failed messages under key.
func addN(res *genResult, key, sample string, count int) {
	res.addErr(key, sample)
	res.errors[key] += int64(count - 1)
}
