package httpapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/sluice-mta/sluice/internal/apikey"
	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/queue"
	"github.com/sluice-mta/sluice/internal/relay"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/internal/token"
	"github.com/sluice-mta/sluice/pipeline"
)

// ---- a Go stage that records what it saw and can be told what to say ----

type seen struct {
	Hook     string
	Identity *pipeline.Identity
	Tenant   string
	TLS      string
}

type testStage struct {
	mu       sync.Mutex
	seen     []seen
	noRecord bool // benchmarks
	port     int  // the sink's port: on_route relays there

	connect func(c *pipeline.Conn) pipeline.Verdict
	auth    func(c *pipeline.Conn, cr *pipeline.Credentials) (pipeline.Verdict, *pipeline.Identity)
	mail    func(txn *pipeline.Txn) pipeline.Verdict
	rcpt    func(txn *pipeline.Txn, r *pipeline.Recipient) pipeline.Verdict
	message func(m *pipeline.Message) pipeline.Verdict
	route   func(m *pipeline.Message, r *pipeline.Recipient) pipeline.Verdict
}

func (s *testStage) Name() string { return "test" }

func (s *testStage) saw(hook string, c *pipeline.Conn) {
	if s.noRecord {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var id *pipeline.Identity
	if c.Identity != nil {
		cp := *c.Identity
		id = &cp
	}
	s.seen = append(s.seen, seen{Hook: hook, Identity: id, Tenant: c.Tenant(), TLS: c.TLS})
}

func (s *testStage) hooks() []seen {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]seen(nil), s.seen...)
}

func (s *testStage) OnConnect(ctx context.Context, c *pipeline.Conn) (pipeline.Verdict, error) {
	s.saw("on_connect", c)
	if s.connect != nil {
		return s.connect(c), nil
	}
	return pipeline.Verdict{}, nil
}

func (s *testStage) OnAuth(ctx context.Context, c *pipeline.Conn, cr *pipeline.Credentials) (pipeline.Verdict, *pipeline.Identity, error) {
	s.saw("on_auth", c)
	if s.auth != nil {
		v, id := s.auth(c, cr)
		return v, id, nil
	}
	return pipeline.Verdict{}, nil, nil
}

func (s *testStage) OnMail(ctx context.Context, txn *pipeline.Txn) (pipeline.Verdict, error) {
	s.saw("on_mail", txn.Conn)
	if s.mail != nil {
		return s.mail(txn), nil
	}
	return pipeline.Verdict{}, nil
}

func (s *testStage) OnRcpt(ctx context.Context, txn *pipeline.Txn, r *pipeline.Recipient) (pipeline.Verdict, error) {
	s.saw("on_rcpt", txn.Conn)
	if s.rcpt != nil {
		return s.rcpt(txn, r), nil
	}
	return pipeline.Verdict{}, nil
}

func (s *testStage) OnMessage(ctx context.Context, m *pipeline.Message) (pipeline.Verdict, error) {
	s.saw("on_message", m.Conn)
	if s.message != nil {
		return s.message(m), nil
	}
	return pipeline.Verdict{}, nil
}

func (s *testStage) OnRoute(ctx context.Context, m *pipeline.Message, r *pipeline.Recipient) (pipeline.Verdict, error) {
	s.saw("on_route", m.Conn)
	if s.route != nil {
		if v := s.route(m, r); v.Action != pipeline.Continue {
			return v, nil
		}
	}
	return pipeline.RouteVerdict(&pipeline.Route{Kind: pipeline.RouteRelay, Host: "127.0.0.1", Port: s.port, TLS: pipeline.TLSNone}), nil
}

var (
	_ pipeline.ConnectHook = (*testStage)(nil)
	_ pipeline.AuthHook    = (*testStage)(nil)
	_ pipeline.MailHook    = (*testStage)(nil)
	_ pipeline.RcptHook    = (*testStage)(nil)
	_ pipeline.MessageHook = (*testStage)(nil)
	_ pipeline.RouteHook   = (*testStage)(nil)
)

// ---- the environment: spool, queue, delivery, relay, keys, server ----

// dialer adapts internal/delivery to the queue.
type dialer struct{ d *delivery.Dialer }

func (x dialer) Dial(ctx context.Context, r *pipeline.Route, domain string) (queue.Conn, error) {
	s, err := x.d.Dial(ctx, r, domain)
	if err != nil {
		return nil, err
	}
	return s, nil
}

type env struct {
	t        testing.TB
	sp       *spool.Spool
	q        *queue.Queue
	relay    *relay.Relay
	keys     *apikey.Store
	keysPath string
	srv      *Server
	url      string
	client   *http.Client
	sink     *testutil.Sink // the next hop: on_route relays every recipient there
	stage    *testStage
	sendKey  string // tenant acme, scope send
	adminKey string // tenant acme, scope admin only
	otherKey string // tenant other, scope send
}

type envOptions struct {
	listener    config.HTTPListener
	noDelivery  bool // stop the queue: measure acceptance only
	quiet       bool
	stageConfig func(*testStage)
	tokIss      *token.Issuer // UseTokens (tokens_test.go)
	tokVer      *token.Verifier
	logs        io.Writer     // when set, the server logs JSON lines here (info and up)
	retryFirst  time.Duration // the queue's first backoff; default 100 ms
	spoolFS     vfs.FS        // the spool's filesystem (faults); nil: the OS's
	minFree     int64         // the spool's reserve (spool.Options.MinFree)
}

func testLogger(t testing.TB, quiet bool) *slog.Logger {
	if quiet || !testing.Verbose() {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func newEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	log := testLogger(t, o.quiet)
	if o.logs != nil {
		log = slog.New(slog.NewJSONHandler(o.logs, nil))
	}
	dir := t.TempDir()
	sp, err := spool.Open(filepath.Join(dir, "spool"), spool.Options{Logger: log, Node: "test-node", MemtableMB: 64,
		FS: o.spoolFS, MinFree: o.minFree})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, sp: sp}
	e.sink = testutil.StartSink(t, testutil.SinkOptions{})
	e.stage = &testStage{port: e.sink.Port}
	if o.stageConfig != nil {
		o.stageConfig(e.stage)
	}
	chain, err := pipeline.Compile([]pipeline.Stage{e.stage}, pipeline.ChainOptions{Logger: log, StageTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	d := delivery.NewDialer(config.Delivery{Hostname: "relay.test", ConnectTimeout: 5 * time.Second,
		CommandTimeout: 10 * time.Second, DataTimeout: 10 * time.Second}, nil)
	if o.retryFirst == 0 {
		o.retryFirst = 100 * time.Millisecond
	}
	e.q = queue.New(sp, dialer{d}, queue.Options{Logger: log, RetryInitial: o.retryFirst, RetryJitter: 0})
	if _, err := e.q.Load(); err != nil {
		t.Fatal(err)
	}
	if o.noDelivery {
		e.q.Stop(context.Background())
	} else {
		e.q.Start()
	}
	sp.SetSuppressionPolicy(spool.SuppressionPolicy{Enabled: true, Classes: config.DefaultSuppression().Classes})
	e.relay = relay.NewSpool(relay.NewPipeline(chain, nil), sp, e.q, relay.Options{Logger: log, Hostname: "relay.test", Suppressions: sp})
	e.q.SetBouncer(e.relay)

	e.keysPath = apikey.DefaultPath(filepath.Join(dir, "spool"))
	if e.keys, err = apikey.Open(e.keysPath); err != nil {
		t.Fatal(err)
	}
	e.sendKey = e.createKey(apikey.CreateOptions{Tenant: "acme", Name: "app"})
	e.adminKey = e.createKey(apikey.CreateOptions{Tenant: "acme", Scopes: []string{apikey.ScopeAdmin}, Name: "ops"})
	e.otherKey = e.createKey(apikey.CreateOptions{Tenant: "other"})

	l := o.listener
	if l.Addr == "" {
		l.Addr = "127.0.0.1:0"
	}
	e.srv, err = New(l, e.relay, sp, e.keys, "relay.test", log)
	if err != nil {
		t.Fatal(err)
	}
	e.srv.UseTokens(o.tokIss, o.tokVer)
	// Every response of the suite is checked against openapi.json.
	e.srv.hs.Handler = checkedHandler(t, e.srv.hs.Handler)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- e.srv.Serve(ln) }()
	scheme := "http"
	tr := &http.Transport{MaxIdleConnsPerHost: 128, DisableCompression: true}
	if l.TLS != nil {
		scheme = "https"
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
		tr.ForceAttemptHTTP2 = true
	}
	e.url = scheme + "://" + ln.Addr().String()
	e.client = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := e.srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		tr.CloseIdleConnections()
		e.q.Stop(ctx)
		sp.Close()
	})
	return e
}

func (e *env) createKey(o apikey.CreateOptions) string {
	e.t.Helper()
	tok, _, err := e.keys.Create(o)
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

type resp struct {
	Status int
	Header http.Header
	Body   []byte
}

func (r resp) json(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("status %d, body %q: %v", r.Status, r.Body, err)
	}
}

// errorOf returns the error object of an error answer.
func (r resp) errorOf(t testing.TB) apiError {
	t.Helper()
	var b struct {
		Error *apiError `json:"error"`
	}
	r.json(t, &b)
	if b.Error == nil {
		t.Fatalf("status %d, no error object in %s", r.Status, r.Body)
	}
	return *b.Error
}

// do sends a request; body may be a string, []byte or a value to encode.
func (e *env) do(method, path, key string, body any, hdr ...string) resp {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = bytes.NewReader([]byte(b))
	case []byte:
		rd = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := e.client.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp{Status: res.StatusCode, Header: res.Header, Body: data}
}

func (e *env) post(path string, body any, hdr ...string) resp {
	e.t.Helper()
	return e.do(http.MethodPost, path, e.sendKey, body, hdr...)
}

// queued counts the recipients waiting in the spool.
func (e *env) queued() int {
	e.t.Helper()
	n := 0
	if err := e.sp.ScanRecipients(func(*spool.Meta, *spool.Recipient) error { n++; return nil }); err != nil {
		e.t.Fatal(err)
	}
	return n
}

func itoa(i int) string { return strconv.Itoa(i) }
