package events

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// WebhookOptions configures one webhook endpoint (NewWebhook). Zero
// values take the defaults.
type WebhookOptions struct {
	// Name names the endpoint; the sink (and its cursor) is
	// "webhook:<Name>". Required.
	Name string
	// URL is the http or https URL events are POSTed to. Required.
	URL string
	// Secret is the signing secret in the Standard Webhooks form
	// "whsec_<base64>" (at least 24 bytes once decoded). Required.
	Secret string
	// Types, when not empty, are the only event types sent; Tenants, when
	// not empty, the only tenants ("" is the events of no tenant). Other
	// events are skipped (they count as done).
	Types, Tenants []string
	// Timeout bounds one request, connecting included (10 s).
	Timeout time.Duration
	// DeadLetterAfter is the age of an event (from its "time") past which
	// a failed attempt sends it to the dead-letter file instead of being
	// retried (24 h).
	DeadLetterAfter time.Duration
	// DeadLetter is the dead-letter file's path. Required.
	DeadLetter string
	// Concurrency bounds the requests in flight at once (4). Events of one
	// message are always sent one after the other, in outbox order.
	Concurrency int
	// Client sends the requests; nil: a client of its own (system TLS
	// roots, proxy from the environment). Redirects are never followed.
	Client *http.Client
	Logger *slog.Logger
	// DeadLetters is the shared sluice_event_dead_letters_total
	// (NewDeadLetterCounter); nil: counted, not exported.
	DeadLetters *prometheus.CounterVec
	// Latency, when set, observes each request's duration in seconds
	// (NewWebhookLatency).
	Latency *prometheus.HistogramVec
}

// NewWebhookLatency builds sluice_webhook_request_duration_seconds
// {consumer, outcome} (outcome: "2xx", another status class such as
// "5xx", or "error" for no answer) and registers it with reg (nil: not
// exported). Build it once per registry and share it.
func NewWebhookLatency(reg prometheus.Registerer) (*prometheus.HistogramVec, error) {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sluice_webhook_request_duration_seconds",
		Help:    "Duration of webhook requests, from sending to the end of the answer's headers.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"consumer", "outcome"})
	if reg != nil {
		if err := reg.Register(h); err != nil {
			return nil, fmt.Errorf("events: registering webhook metrics: %w", err)
		}
	}
	return h, nil
}

// Webhook is a Sink that POSTs each event to an HTTP endpoint, one event
// per request, signed per the Standard Webhooks specification:
//
//	POST <url>
//	content-type: application/json
//	webhook-id: <event_id>
//	webhook-timestamp: <Unix seconds of this attempt>
//	webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">
//
//	<the event JSON>
//
// A 2xx answer is success; any other answer, a redirect, a timeout or a
// network error is a failure. A failed batch is retried by the Exporter
// from the sink's cursor (with backoff); the events of it already
// answered 2xx are not sent again by this process (after a restart they
// may be: at least once, deduplicate on webhook-id). Events of one
// message are sent in order, each only after the previous one succeeded
// or was dead-lettered; different messages go concurrently.
//
// A failed event older than DeadLetterAfter is written to the dead-letter
// file (with a log line and sluice_event_dead_letters_total) and counts as
// done. Write is called from one goroutine at a time (Sink).
type Webhook struct {
	o       WebhookOptions
	name    string
	signer  *standardwebhooks.Webhook
	client  *http.Client
	types   map[string]bool
	tenants map[string]bool
	dead    *DeadLetter
	log     *slog.Logger
	latency prometheus.ObserverVec

	// sent holds the seqs of the events done (2xx, skipped or
	// dead-lettered) in a batch that failed as a whole, so its retry does
	// not send them again. Only Write's goroutine uses it.
	sent map[uint64]bool
}

// NewWebhook checks o and opens the dead-letter file. It sends nothing.
func NewWebhook(o WebhookOptions) (*Webhook, error) {
	if o.Name == "" {
		return nil, errors.New("webhook: a name is required")
	}
	where := fmt.Sprintf("webhook %q", o.Name)
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%s: url %q: want an absolute http:// or https:// URL", where, o.URL)
	}
	signer, err := ParseWebhookSecret(o.Secret)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	if o.DeadLetter == "" {
		return nil, fmt.Errorf("%s: a dead-letter file path is required", where)
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.DeadLetterAfter <= 0 {
		o.DeadLetterAfter = 24 * time.Hour
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	w := &Webhook{o: o, name: "webhook:" + o.Name, signer: signer, sent: map[uint64]bool{},
		log: o.Logger.With("component", "events", "consumer", "webhook:"+o.Name)}
	if len(o.Types) > 0 {
		w.types = map[string]bool{}
		for _, t := range o.Types {
			w.types[t] = true
		}
	}
	if len(o.Tenants) > 0 {
		w.tenants = map[string]bool{}
		for _, t := range o.Tenants {
			w.tenants[t] = true
		}
	}
	if o.Latency == nil {
		o.Latency, _ = NewWebhookLatency(nil)
	}
	w.latency = o.Latency.MustCurryWith(prometheus.Labels{"consumer": w.name})
	w.client = o.Client
	if w.client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = o.Concurrency
		w.client = &http.Client{Transport: tr}
	}
	c := *w.client
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	w.client = &c
	if w.dead, err = OpenDeadLetter(o.DeadLetter, w.name, o.DeadLetters, o.Logger); err != nil {
		return nil, err
	}
	return w, nil
}

// ParseWebhookSecret checks a Standard Webhooks secret, "whsec_" and the
// base64 (standard alphabet, padded) of at least 24 random bytes, and
// returns its signer. Make one with: echo "whsec_$(openssl rand -base64 32)".
func ParseWebhookSecret(secret string) (*standardwebhooks.Webhook, error) {
	const hint = `make one with: echo "whsec_$(openssl rand -base64 32)"`
	b64, ok := strings.CutPrefix(secret, "whsec_")
	if !ok {
		return nil, fmt.Errorf("secret: want whsec_ followed by base64 (%s)", hint)
	}
	if key, err := base64.StdEncoding.DecodeString(b64); err != nil || len(key) < 24 {
		return nil, fmt.Errorf("secret: want whsec_ followed by the base64 of at least 24 bytes (%s)", hint)
	}
	return standardwebhooks.NewWebhook(secret)
}

// Name is "webhook:" and the endpoint's name.
func (w *Webhook) Name() string { return w.name }

// Close closes the dead-letter file and idle connections.
func (w *Webhook) Close() error {
	w.client.CloseIdleConnections()
	return w.dead.Close()
}

// routing is what the sink needs from an event's JSON.
type routing struct {
	EventID string    `json:"event_id"`
	Tenant  string    `json:"tenant"`
	Time    time.Time `json:"time"`
}

// Write sends batch and returns nil once every event in it is done: sent
// (2xx), filtered out, or dead-lettered. Otherwise it returns the first
// failure, and the exporter retries the batch.
func (w *Webhook) Write(ctx context.Context, batch []Event) error {
	if len(batch) == 0 {
		return nil
	}
	// Forget what an earlier, failed batch did below this one.
	for seq := range w.sent {
		if seq < batch[0].Seq {
			delete(w.sent, seq)
		}
	}
	// Group by message, in order; the groups run concurrently.
	var groups [][]Event
	index := map[string]int{}
	for _, ev := range batch {
		if w.sent[ev.Seq] || (w.types != nil && !w.types[ev.Type]) {
			continue
		}
		i, ok := index[ev.MessageID]
		if !ok {
			i = len(groups)
			index[ev.MessageID] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], ev)
	}
	var (
		mu    sync.Mutex
		first error
		done  []uint64
	)
	work := make(chan []Event)
	var wg sync.WaitGroup
	for range min(w.o.Concurrency, len(groups)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for g := range work {
				n, err := w.sendGroup(ctx, g)
				mu.Lock()
				for _, ev := range g[:n] {
					done = append(done, ev.Seq)
				}
				if err != nil && first == nil {
					first = err
				}
				mu.Unlock()
			}
		}()
	}
	for _, g := range groups {
		work <- g
	}
	close(work)
	wg.Wait()
	if first == nil {
		clear(w.sent)
		return nil
	}
	for _, seq := range done {
		w.sent[seq] = true
	}
	return first
}

// sendGroup sends the events of one message in order and returns how many
// are done; it stops at the first that failed and is not old enough to
// dead-letter.
func (w *Webhook) sendGroup(ctx context.Context, g []Event) (int, error) {
	for i, ev := range g {
		var r routing
		if err := json.Unmarshal(ev.JSON, &r); err != nil || r.EventID == "" {
			// Never sendable: dead-letter at once rather than block the
			// message forever.
			if err := w.dead.Write(ev, fmt.Sprintf("undecodable event (%v)", err)); err != nil {
				return i, err
			}
			continue
		}
		if w.tenants != nil && !w.tenants[r.Tenant] {
			continue
		}
		err := w.post(ctx, r.EventID, ev.JSON)
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			return i, err
		}
		if age := time.Since(r.Time); age >= w.o.DeadLetterAfter {
			reason := fmt.Sprintf("still failing after %s (dead_letter_after %s): %v", age.Round(time.Second), w.o.DeadLetterAfter, err)
			if derr := w.dead.Write(ev, reason); derr != nil {
				return i, errors.Join(err, derr)
			}
			continue
		}
		return i, err
	}
	return len(g), nil
}

// post sends one signed request and returns nil on a 2xx answer.
func (w *Webhook) post(ctx context.Context, id string, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, w.o.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.o.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	now := time.Now()
	sig, err := w.signer.Sign(id, now, body)
	if err != nil {
		return fmt.Errorf("signing: %w", err)
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set("user-agent", "sluice-webhook/1")
	req.Header.Set(standardwebhooks.HeaderWebhookID, id)
	req.Header.Set(standardwebhooks.HeaderWebhookTimestamp, strconv.FormatInt(now.Unix(), 10))
	req.Header.Set(standardwebhooks.HeaderWebhookSignature, sig)
	start := time.Now()
	resp, err := w.client.Do(req)
	if err != nil {
		w.latency.WithLabelValues("error").Observe(time.Since(start).Seconds())
		return fmt.Errorf("POST %s: %w", redactURL(w.o.URL), err)
	}
	w.latency.WithLabelValues(strconv.Itoa(resp.StatusCode/100) + "xx").Observe(time.Since(start).Seconds())
	// Read a little of the answer so the connection can be reused.
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 == 2 {
		return nil
	}
	text := strings.Join(strings.Fields(string(snippet)), " ")
	if len(text) > 200 {
		text = text[:200]
	}
	return fmt.Errorf("POST %s: answered %s (want 2xx): %q", redactURL(w.o.URL), resp.Status, text)
}

// redactURL drops a URL's user info and query (they may hold tokens)
// for logs.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "<url>"
	}
	u.User = nil
	if u.RawQuery != "" {
		u.RawQuery = "…"
	}
	return u.String()
}
