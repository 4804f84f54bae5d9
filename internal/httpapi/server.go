// Package httpapi is Sluice's HTTP submission API: stateless JSON POSTs
// authenticated with bearer API keys, run through the same pipeline as
// SMTP (on_connect, on_auth, on_mail, on_rcpt, then on_message and
// on_route in the relay) and answered 202 only once the message is
// durably in the spool.
//
// Endpoints (docs/http-api.md and the embedded OpenAPI document describe
// them in full):
//
//	POST /v1/messages          compose a message from JSON fields
//	POST /v1/messages/raw      envelope plus a ready RFC 5322 message
//	POST /v1/messages/batch    up to 500 messages, one durable sync
//	GET  /v1/messages/{id}     per-recipient state and event timeline
//	GET  /v1/admin/keys        the tenant's API keys (admin scope)
//	POST /v1/tokens            mint a short-lived token (tokens scope; tokens.go)
//	DELETE /v1/tokens/{id}, POST /v1/tokens/revoke
//	                           revoke tokens (tokens scope; revocations.go)
//	GET  /.well-known/sluice-keys.json  the token verification keys
//	GET  /v1/admin/messages    messages still queued, filtered and paged (admin scope)
//	GET/POST /v1/domains, GET/DELETE /v1/domains/{domain}
//	                           the tenant's sending domains (domains.go)
//	GET/POST /v1/suppressions, GET/DELETE /v1/suppressions/{address}
//	                           the tenant's suppression list (suppressions.go)
//	/v1/sandbox/...            the tenant's sandbox inbox: list, get, wait,
//	                           stream, assert, delete (sandbox.go)
//	/sandbox/api/v1/...        the same, in Mailpit's API shapes (mailpit.go)
//	GET  /v1/openapi.json      the OpenAPI 3 document
//	GET  /healthz              liveness
//
// What it is not: a queue administration API, a metrics endpoint or a
// TLS terminator for other services. It never trusts X-Forwarded-For: the
// client address stages see is the TCP peer.
//
// Lifecycle: New validates and builds (no goroutine, no socket); Serve
// serves one listener and starts the hourly prune of expired idempotency
// records; Shutdown stops both.
package httpapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-mta/sluice/internal/apikey"
	"github.com/sluice-mta/sluice/internal/capture"
	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/domains"
	"github.com/sluice-mta/sluice/internal/logx"
	"github.com/sluice-mta/sluice/internal/mailtext"
	"github.com/sluice-mta/sluice/internal/queue"
	"github.com/sluice-mta/sluice/internal/relay"
	"github.com/sluice-mta/sluice/internal/revoke"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
	"golang.org/x/sync/semaphore"
)

//go:embed openapi.json
var openAPI []byte

const (
	idempotencyTTL = 24 * time.Hour
	pruneEvery     = time.Hour
)

// Server serves the API. It is safe for concurrent use.
type Server struct {
	l     config.HTTPListener
	relay *relay.Relay
	sp    *spool.Spool
	keys  *apikey.Store
	// toks is set by UseTokens (tokens.go); nil: no tokens.
	toks atomic.Pointer[tokenSet]
	// revocations is set by UseRevocations (revocations.go); nil: none.
	revocations atomic.Pointer[revoke.List]
	host        string
	log         *slog.Logger
	max         int64
	now         func() time.Time
	hs          *http.Server
	tls         *tls.Config
	locks       keyedMutex
	// inflight bounds the request bodies in memory at once
	// (MaxInflightBytes): see readBody.
	inflight *semaphore.Weighted
	sample   *logx.Sampler // refusals logged once per 10 s

	// domains is set by UseDomains (domains.go); nil: no domains API.
	domains atomic.Pointer[domains.Registry]
	// tlsReports is set by UseTLSReports (tlsreports.go); nil: 404.
	tlsReports atomic.Pointer[tlsReportsHolder]
	// queue is set by UseQueue (queues.go); nil: no queue control.
	queue atomic.Pointer[queue.Queue]
	// tracking is set by UseTracking (tracking.go); nil: no tracking hosts.
	tracking atomic.Pointer[trackingHolder]
	// sandbox is set by UseSandbox (sandbox.go); nil: no sandbox API.
	sandbox atomic.Pointer[capture.Store]

	startOnce sync.Once
	stopOnce  sync.Once
	stop      chan struct{}
	done      chan struct{}
}

// New builds a Server for listener l. hostname is the right-hand side of
// the Message-ID of composed messages (default: the OS host name). With
// l.TLS set, the certificate is loaded here and Serve speaks TLS with
// HTTP/2 and HTTP/1.1; without, HTTP/1.1 with keep-alive.
func New(l config.HTTPListener, r *relay.Relay, sp *spool.Spool, keys *apikey.Store, hostname string, log *slog.Logger) (*Server, error) {
	if r == nil || sp == nil || keys == nil {
		return nil, errors.New("httpapi: a relay, a spool and a key store are required")
	}
	if log == nil {
		log = slog.Default()
	}
	if hostname == "" {
		hostname, _ = os.Hostname()
	}
	if hostname == "" {
		hostname = "localhost"
	}
	if strings.ContainsAny(hostname, " \t\r\n<>@\"") {
		return nil, fmt.Errorf("httpapi: hostname %q cannot be used in a Message-ID", hostname)
	}
	s := &Server{
		l: l, relay: r, sp: sp, keys: keys, host: hostname,
		log: log.With("component", "http", "listener", l.Addr), max: l.MaxRequestSize, now: time.Now,
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	if s.max <= 0 {
		s.max = config.DefaultHTTPListener(l.Addr).MaxRequestSize
	}
	if l.MaxInflightBytes <= 0 {
		l.MaxInflightBytes = config.DefaultHTTPListener(l.Addr).MaxInflightBytes
		s.l.MaxInflightBytes = l.MaxInflightBytes
	}
	s.inflight = semaphore.NewWeighted(l.MaxInflightBytes)
	s.sample = logx.NewSampler(10 * time.Second)
	// request_timeout bounds reading a whole request, header and body: a
	// client sending its body at 1 byte/s is cut off then (408), instead
	// of holding a connection and a handler for minutes.
	readTimeout := l.RequestTimeout
	if readTimeout <= 0 {
		readTimeout = config.DefaultHTTPListener(l.Addr).RequestTimeout
	}
	headerTimeout := 10 * time.Second
	if headerTimeout > readTimeout {
		headerTimeout = readTimeout
	}
	var err error
	if s.tls, err = tlsConfig(l); err != nil {
		return nil, err
	}
	s.hs = &http.Server{
		Handler:           s,
		TLSConfig:         s.tls,
		ReadHeaderTimeout: headerTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      5 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	if l.AccessLog {
		s.hs.Handler = accessLog(s.log.With("access_log", true), s)
	}
	return s, nil
}

// CheckListener reports what New would refuse in l (TLS files that
// cannot be loaded), without building anything.
func CheckListener(l config.HTTPListener) error {
	_, err := tlsConfig(l)
	return err
}

func tlsConfig(l config.HTTPListener) (*tls.Config, error) {
	if l.TLS == nil {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(l.TLS.Cert, l.TLS.Key)
	if err != nil {
		return nil, fmt.Errorf("http listener %s: tls: %w", l.Addr, err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"h2", "http/1.1"},
	}, nil
}

// Handler returns the API as an http.Handler (tests, or embedding in
// another server). Serve uses the same handler.
func (s *Server) Handler() http.Handler { return s }

// Serve accepts connections on ln until Shutdown. It returns nil after a
// Shutdown, else the error that stopped it.
func (s *Server) Serve(ln net.Listener) error {
	s.startOnce.Do(func() { go s.pruneLoop() })
	var err error
	if s.tls != nil {
		err = s.hs.ServeTLS(ln, "", "")
	} else {
		err = s.hs.Serve(ln)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, waits for in-flight requests until ctx ends
// (then closes their connections), and stops the prune loop.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopOnce.Do(func() { close(s.stop) })
	err := s.hs.Shutdown(ctx)
	s.startOnce.Do(func() { close(s.done) }) // never served: no prune loop to wait for
	select {
	case <-s.done:
	case <-ctx.Done():
	}
	if err != nil {
		_ = s.hs.Close()
	}
	return err
}

// pruneLoop deletes expired idempotency records at start and hourly.
func (s *Server) pruneLoop() {
	defer close(s.done)
	t := time.NewTicker(pruneEvery)
	defer t.Stop()
	for {
		n, err := s.sp.PruneIdempotency(s.now())
		if err != nil {
			s.log.Warn("cannot prune idempotency records", "err", err)
		} else if n > 0 {
			s.log.Info("pruned expired idempotency records", "count", n)
		}
		select {
		case <-t.C:
		case <-s.stop:
			return
		}
	}
}

// ServeHTTP routes a request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.serveTracking(w, r) {
		return
	}
	if r.Method == http.MethodPost {
		rel := &bodyRelease{}
		r = r.WithContext(context.WithValue(r.Context(), bodyReleaseKey{}, rel))
		defer func() {
			if rel.n > 0 {
				s.inflight.Release(rel.n)
			}
		}()
	}
	p := r.URL.Path
	switch {
	case p == "/v1/messages":
		if s.method(w, r, http.MethodPost) {
			s.postMessage(w, r)
		}
	case p == "/v1/messages/raw":
		if s.method(w, r, http.MethodPost) {
			s.postRaw(w, r)
		}
	case p == "/v1/messages/batch":
		if s.method(w, r, http.MethodPost) {
			s.postBatch(w, r)
		}
	case strings.HasPrefix(p, "/v1/messages/") && strings.Count(p, "/") == 4 && queueActions[p[strings.LastIndexByte(p, '/')+1:]] != nil:
		if s.method(w, r, http.MethodPost) {
			i := strings.LastIndexByte(p, '/')
			s.messageAction(w, r, p[len("/v1/messages/"):i], p[i+1:])
		}
	case p == queuesPath || strings.HasPrefix(p, queuesPath+"/"):
		s.queuesAPI(w, r)
	case strings.HasPrefix(p, "/v1/messages/") && !strings.Contains(p[len("/v1/messages/"):], "/"):
		if s.method(w, r, http.MethodGet) {
			s.getMessage(w, r, p[len("/v1/messages/"):])
		}
	case p == tokensPath:
		if s.method(w, r, http.MethodPost) {
			s.postToken(w, r)
		}
	case strings.HasPrefix(p, tokensPath+"/"):
		s.tokenRevocation(w, r)
	case p == KeysPath:
		if s.method(w, r, http.MethodGet) {
			s.publicKeys(w, r)
		}
	case p == "/v1/admin/keys":
		if s.method(w, r, http.MethodGet) {
			s.adminKeys(w, r)
		}
	case p == "/v1/admin/messages":
		if s.method(w, r, http.MethodGet) {
			s.adminMessages(w, r)
		}
	case p == tlsReportsPath || p == tlsReportsPath+"/send":
		s.tlsReportsAPI(w, r)
	case p == suppressionsPath || strings.HasPrefix(p, suppressionsPath+"/"):
		s.suppressions(w, r)
	case strings.HasPrefix(p, sandboxPath+"/"):
		s.sandboxAPI(w, r)
	case strings.HasPrefix(p, mailpitPath+"/"):
		s.mailpitAPI(w, r)
	case p == domainsPath || strings.HasPrefix(p, domainsPath+"/"):
		s.domainsAPI(w, r)
	case p == "/v1/openapi.json":
		if s.method(w, r, http.MethodGet) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Cache-Control", "public, max-age=300")
			_, _ = w.Write(openAPI)
		}
	case p == "/healthz":
		if s.method(w, r, http.MethodGet) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("Cache-Control", "no-store")
			_, _ = w.Write([]byte("ok"))
		}
	default:
		s.writeAnswer(w, errorAnswer(errNotFound, "", nil))
	}
}

// method answers 405 unless r uses m (or HEAD for GET).
func (s *Server) method(w http.ResponseWriter, r *http.Request, m string) bool {
	if r.Method == m || m == http.MethodGet && r.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", m)
	s.writeAnswer(w, errorAnswer(errf(http.StatusMethodNotAllowed, codeMethodNotAllowed, "", "use %s", m), "", nil))
	return false
}

// ---- answers ----

// answer is a complete response: status, JSON body, Retry-After.
type answer struct {
	status     int
	body       []byte
	retryAfter string
	replayed   bool
}

type errorBody struct {
	Error      *apiError    `json:"error"`
	ID         string       `json:"id,omitempty"`
	Recipients []rcptAnswer `json:"recipients,omitempty"`
}

func errorAnswer(e *apiError, id string, rcpts []rcptAnswer) answer {
	b, err := json.Marshal(errorBody{Error: e, ID: id, Recipients: rcpts})
	if err != nil {
		b = []byte(`{"error":{"code":"internal","message":"internal error"}}`)
	}
	return answer{status: e.Status, body: b, retryAfter: e.retryAfter()}
}

func (s *Server) writeAnswer(w http.ResponseWriter, a answer) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	if a.retryAfter != "" {
		h.Set("Retry-After", a.retryAfter)
	}
	if a.status == http.StatusUnauthorized {
		h.Set("WWW-Authenticate", `Bearer realm="sluice"`)
	}
	if a.replayed {
		h.Set("Idempotent-Replayed", "true")
	}
	w.WriteHeader(a.status)
	_, _ = w.Write(a.body)
	_, _ = w.Write([]byte{'\n'})
}

func (s *Server) fail(w http.ResponseWriter, e *apiError) {
	s.writeAnswer(w, errorAnswer(e, "", nil))
}

// ---- request plumbing ----

// Buffers for request bodies and composed messages come from a bounded
// free list rather than a sync.Pool: a pool is emptied at every GC, which
// at thousands of requests a second is every few milliseconds.
const (
	freeBuffers   = 256 // at most 32 MiB kept
	maxFreeBuffer = 128 << 10
)

var bufFree = make(chan *bytes.Buffer, freeBuffers)

func getBuf() *bytes.Buffer {
	select {
	case b := <-bufFree:
		return b
	default:
		return new(bytes.Buffer)
	}
}

func putBuf(b *bytes.Buffer) {
	if b == nil || b.Cap() > maxFreeBuffer {
		return // let large buffers go
	}
	b.Reset()
	select {
	case bufFree <- b:
	default:
	}
}

// authenticate checks the bearer credential (an API key, or a token when
// sluice.tokens is configured: tokens.go) and its scope. Any of scopes
// will do. A missing or unknown credential (401) is logged by the relay
// like a failed SMTP AUTH: with the client address, at most one line per
// address per 10 s.
func (s *Server) authenticate(r *http.Request, scopes ...string) (*caller, *apiError) {
	h := r.Header.Get("Authorization")
	if len(h) < 7 || !strings.EqualFold(h[:7], "Bearer ") {
		s.authFailed(r, "APIKEY", "missing bearer key")
		return nil, errUnauthorized
	}
	cred := strings.TrimSpace(h[7:])
	var c *caller
	if isToken(cred) {
		var e *apiError
		if c, e = s.verifyToken(r, cred); e != nil {
			return nil, e
		}
	} else {
		k, err := s.keys.Authenticate(cred)
		if err != nil {
			s.authFailed(r, "APIKEY", err.Error())
			return nil, errUnauthorized
		}
		c = &caller{Key: k}
	}
	for _, sc := range scopes {
		if c.HasScope(sc) {
			return c, nil
		}
	}
	return nil, errf(http.StatusForbidden, codeForbidden, "", "this %s lacks the %q scope", c.kind(), scopes[0])
}

// authFailed logs a 401 through the relay's rate-limited failure log.
func (s *Server) authFailed(r *http.Request, mech, reason string) {
	conn := &pipeline.Conn{Source: pipeline.SourceHTTP, Listener: s.l.Addr}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		conn.RemoteIP, conn.RemotePort = ap.Addr().Unmap(), ap.Port()
	}
	if s.relay != nil {
		s.relay.AuthFailed(conn, mech, "", reason)
	}
}

// readBody checks the media type and reads the body (at most the
// listener's MaxRequestSize) into a pooled buffer the caller puts back.
//
// Before reading it reserves twice the body's length (its Content-Length,
// or MaxRequestSize when the length is not given: the buffer and what is
// decoded from it) in the listener's in-flight budget (MaxInflightBytes),
// released when the request's handler returns; past the budget the
// request gets 503 with Retry-After and its body is never read. So many
// large requests at once cannot take memory without bound.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) (*bytes.Buffer, *apiError) {
	if e := s.reserveBody(r); e != nil {
		return nil, e
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			return nil, errf(http.StatusUnsupportedMediaType, codeUnsupportedType, "", "Content-Type must be application/json")
		}
	}
	tooLarge := errf(http.StatusRequestEntityTooLarge, codeTooLarge, "", "the request body is larger than %d bytes", s.max)
	if r.ContentLength > s.max {
		return nil, tooLarge
	}
	buf := getBuf()
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength) + bytes.MinRead)
	}
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, s.max)); err != nil {
		putBuf(buf)
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, tooLarge
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, errf(http.StatusRequestTimeout, codeRequestTimeout, "", "the request was not read within %s (request_timeout)", s.hs.ReadTimeout)
		}
		return nil, errf(http.StatusBadRequest, codeInvalidJSON, "", "cannot read the request body")
	}
	return buf, nil
}

// bodyRelease releases a request's reservation in the in-flight budget;
// ServeHTTP puts one in each request's context and calls it at the end.
type bodyRelease struct{ n int64 }

type bodyReleaseKey struct{}

// reserveBody takes the request body's share of the in-flight budget.
func (s *Server) reserveBody(r *http.Request) *apiError {
	n := r.ContentLength
	if n < 0 || n > s.max {
		n = s.max
	}
	n = 2*n + 4096
	n = min(n, s.l.MaxInflightBytes)
	if !s.inflight.TryAcquire(n) {
		if ok, n := s.sample.Allow("inflight"); ok {
			s.log.Warn("request refused: the listener's request bodies in memory are at max_inflight_bytes", "remote", r.RemoteAddr,
				"max_inflight_bytes", s.l.MaxInflightBytes, "similar_suppressed", n)
		}
		return errf(http.StatusServiceUnavailable, codeUnavailable, "", "the server holds as many request bodies as it may (max_inflight_bytes); try again shortly")
	}
	if rel, _ := r.Context().Value(bodyReleaseKey{}).(*bodyRelease); rel != nil {
		rel.n += n
	} else {
		s.inflight.Release(n) // not through ServeHTTP (tests): nothing would release it
	}
	return nil
}

// openConn starts the request's relay session: on_connect, then on_auth
// with the key's identity (Session.Verified), then checks that the
// resulting identity may send. The relay logs refusals.
func (s *Server) openConn(ctx context.Context, r *http.Request, k *caller) (*relay.Session, *apiError) {
	conn := &pipeline.Conn{Source: pipeline.SourceHTTP, Listener: s.l.Addr, ServerName: s.host}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		conn.RemoteIP, conn.RemotePort = ap.Addr().Unmap(), ap.Port()
	}
	if r.TLS != nil {
		conn.TLS = mailtext.TLSVersionName(r.TLS.Version)
	}
	sess := s.relay.NewSession(conn)
	if err := sess.Connect(ctx); err != nil {
		return nil, fromAccess(err)
	}
	id, err := sess.Verified(ctx, k.credentials(), k.Identity())
	if err != nil {
		return nil, fromAccess(err)
	}
	if !id.HasScope(apikey.ScopeSend) {
		return nil, errf(http.StatusForbidden, codeForbidden, "", "this identity lacks the %q scope", apikey.ScopeSend)
	}
	return sess, nil
}

// checkSender applies the relay's sender rule (relay.CheckEnvelopeSender)
// to the envelope sender, reported as field.
func checkSender(id *pipeline.Identity, field, addr string) *apiError {
	if err := relay.CheckEnvelopeSender(id, addr); err != nil {
		return errf(http.StatusForbidden, codeSenderNotAllowed, field, "%s may not send from %q", credential(id), addr)
	}
	return nil
}

// credential names what the caller authenticated with, for error messages.
func credential(id *pipeline.Identity) string {
	if id != nil && id.Method == "token" {
		return "this token"
	}
	return "this API key"
}

// ---- idempotency ----

// idem is the idempotency context of one request.
type idem struct {
	key  string // spool key: tenant "/" Idempotency-Key
	hash string // SHA-256 of method, path and body
	exp  time.Time
}

// idemRecord is what the spool keeps under idem.key.
type idemRecord struct {
	Hash   string          `json:"h"`
	Status int             `json:"s"`
	Answer json.RawMessage `json:"a"`
	// Pending lists the batch items whose outcome the answer does not
	// know yet (a partial batch answer, see sendBatch).
	Pending []int `json:"p,omitempty"`
}

func (id *idem) value(status int, ans []byte, pending []int) []byte {
	b, _ := json.Marshal(idemRecord{Hash: id.hash, Status: status, Answer: ans, Pending: pending})
	return b
}

// idempotent runs run once per (tenant, Idempotency-Key): concurrent
// requests with one key are serialised; a repeat of a stored answer gets
// it again (nothing is queued); the same key with another body is 422.
// Only accepted (202) answers are stored, by run itself, in the spool
// batch that commits the message.
func (s *Server) idempotent(w http.ResponseWriter, r *http.Request, k *caller, body []byte, run func(*idem) answer) {
	ik := r.Header.Get("Idempotency-Key")
	if ik == "" {
		s.writeAnswer(w, run(nil))
		return
	}
	if e := checkIdempotencyKey(ik); e != nil {
		s.fail(w, e)
		return
	}
	h := sha256.New()
	h.Write([]byte(r.Method + " " + r.URL.Path + "\n"))
	h.Write(body)
	id := &idem{key: k.Tenant + "/" + ik, hash: hex.EncodeToString(h.Sum(nil)), exp: s.now().Add(idempotencyTTL)}
	unlock := s.locks.lock(id.key)
	defer unlock()
	v, found, err := s.sp.GetIdempotency(id.key, s.now())
	if err != nil {
		s.log.Error("cannot read idempotency record", "key", id.key, "err", err)
		s.fail(w, errf(http.StatusServiceUnavailable, codeUnavailable, "", "cannot check the Idempotency-Key now, try again later"))
		return
	}
	if found {
		var rec idemRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			s.log.Error("corrupt idempotency record", "key", id.key, "err", err)
			s.fail(w, errInternal)
			return
		}
		if rec.Hash != id.hash {
			s.fail(w, errf(http.StatusUnprocessableEntity, codeIdempotencyReused, "Idempotency-Key",
				"this Idempotency-Key was used with a different request in the last 24 hours; use a new key for a new request"))
			return
		}
		body := []byte(rec.Answer)
		if len(rec.Pending) > 0 {
			if body, err = s.completeBatch(&rec); err != nil {
				s.log.Error("cannot complete partial idempotency answer", "key", id.key, "err", err)
				s.fail(w, errf(http.StatusServiceUnavailable, codeUnavailable, "", "cannot read the stored answer now, try again later"))
				return
			}
		}
		s.writeAnswer(w, answer{status: rec.Status, body: body, replayed: true})
		return
	}
	s.writeAnswer(w, run(id))
}

// keyedMutex serialises work per key.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*keyedEntry
}

type keyedEntry struct {
	mu sync.Mutex
	n  int
}

func (k *keyedMutex) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyedEntry{}
	}
	e := k.m[key]
	if e == nil {
		e = &keyedEntry{}
		k.m[key] = e
	}
	e.n++
	k.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		k.mu.Lock()
		e.n--
		if e.n == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}
