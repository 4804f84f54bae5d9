package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/internal/capture"
	"github.com/sluice-mta/sluice/pipeline"
)

// The sandbox inbox API (docs/sandbox.md, docs/http-api.md):
//
//	GET    /v1/sandbox/messages?to=&from=&subject=&text=&tag=&since=&until=&start=&limit=
//	DELETE /v1/sandbox/messages                  delete all
//	GET    /v1/sandbox/messages/{id}             summary and parts
//	DELETE /v1/sandbox/messages/{id}
//	GET    /v1/sandbox/messages/{id}/raw         the bytes as captured
//	GET    /v1/sandbox/messages/{id}/events      the event timeline
//	POST   /v1/sandbox/messages/{id}/assert      declarative checks
//	GET    /v1/sandbox/wait?...&timeout=30s      long-poll for a match (408 at the timeout)
//	GET    /v1/sandbox/stream?...                server-sent events of arrivals
//
// Every request is scoped to one tenant, as the suppression list's are
// (suppTenant): the tenant of the key's identity; a key with the admin
// scope may name another with ?tenant=. A key of tenant A never sees
// tenant B's mail: an id of another tenant's message is 404.

const sandboxPath = "/v1/sandbox"

// Bounds of the sandbox API.
const (
	sandboxDefaultLimit = 50
	sandboxMaxLimit     = 1000
	waitDefault         = 30 * time.Second
	waitMax             = 5 * time.Minute
	streamBuffer        = 64
	// waitWriteSlack is the time a wait's answer has to be written after
	// its timeout.
	waitWriteSlack = 30 * time.Second
	maxChecks      = 50
)

// UseSandbox turns on the sandbox API with the capture store (nil: off,
// 404).
func (s *Server) UseSandbox(st *capture.Store) { s.sandbox.Store(st) }

// sandboxStore is the capture store, or nil after answering 404 when the
// sandbox is not configured (both the sandbox and the Mailpit-compatible
// paths start with it).
func (s *Server) sandboxStore(w http.ResponseWriter) *capture.Store {
	st := s.sandbox.Load()
	if st == nil {
		s.fail(w, errf(http.StatusNotFound, codeNotFound, "", "the sandbox is not configured on this node (sluice.sandbox)"))
	}
	return st
}

var filterParams = []string{"to", "from", "subject", "text", "tag", "since", "until"}

// sandboxAPI routes /v1/sandbox/...
func (s *Server) sandboxAPI(w http.ResponseWriter, r *http.Request) {
	st := s.sandboxStore(w)
	if st == nil {
		return
	}
	rest := strings.TrimPrefix(r.URL.Path, sandboxPath)
	switch {
	case rest == "/messages":
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			s.sandboxList(w, r, st)
		case http.MethodDelete:
			s.sandboxDeleteAll(w, r, st)
		default:
			s.notAllowed(w, "GET, DELETE")
		}
	case rest == "/wait":
		if s.method(w, r, http.MethodGet) {
			s.sandboxWait(w, r, st)
		}
	case rest == "/stream":
		if s.method(w, r, http.MethodGet) {
			s.sandboxStream(w, r, st)
		}
	case strings.HasPrefix(rest, "/messages/"):
		id, sub, _ := strings.Cut(strings.TrimPrefix(rest, "/messages/"), "/")
		switch sub {
		case "":
			switch r.Method {
			case http.MethodGet, http.MethodHead:
				s.sandboxGet(w, r, st, id)
			case http.MethodDelete:
				s.sandboxDelete(w, r, st, id)
			default:
				s.notAllowed(w, "GET, DELETE")
			}
		case "raw":
			if s.method(w, r, http.MethodGet) {
				s.sandboxRaw(w, r, st, id)
			}
		case "events":
			if s.method(w, r, http.MethodGet) {
				s.sandboxEvents(w, r, st, id)
			}
		case "assert":
			if s.method(w, r, http.MethodPost) {
				s.sandboxAssert(w, r, st, id)
			}
		default:
			s.fail(w, errNotFound)
		}
	default:
		s.fail(w, errNotFound)
	}
}

// sandboxQuery authenticates r and reads its tenant and search filter;
// extra are the query parameters allowed besides the filter's.
func (s *Server) sandboxQuery(r *http.Request, extra ...string) (string, capture.Filter, *apiError) {
	tenant, e := s.suppTenant(r.Context(), r, append(extra, filterParams...)...)
	if e != nil {
		return "", capture.Filter{}, e
	}
	f, e := filterOf(r)
	return tenant, f, e
}

// filterOf reads the search filter from the query.
func filterOf(r *http.Request) (capture.Filter, *apiError) {
	q := r.URL.Query()
	f := capture.Filter{To: q.Get("to"), From: q.Get("from"), Subject: q.Get("subject"), Text: q.Get("text"), Tag: q.Get("tag")}
	for _, p := range []struct {
		name string
		dst  *time.Time
	}{{"since", &f.Since}, {"until", &f.Until}} {
		v := q.Get(p.name)
		if v == "" {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return f, badField(p.name, "%s must be an RFC 3339 time (2026-11-30T12:00:00Z)", p.name)
		}
		*p.dst = t
	}
	if capture.TooManyTerms(f.Text) {
		return f, badField("text", "text may hold at most %d distinct terms", capture.MaxTerms)
	}
	return f, nil
}

type sandboxPage struct {
	Total    int                `json:"total"`
	Start    int                `json:"start"`
	Count    int                `json:"count"`
	Messages []*capture.Summary `json:"messages"`
}

// GET /v1/sandbox/messages
func (s *Server) sandboxList(w http.ResponseWriter, r *http.Request, st *capture.Store) {
	tenant, f, e := s.sandboxQuery(r, "start", "limit")
	if e != nil {
		s.fail(w, e)
		return
	}
	q := r.URL.Query()
	start, limit := 0, sandboxDefaultLimit
	if v := q.Get("start"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			s.fail(w, badField("start", "start must be a non-negative integer"))
			return
		}
		start = n
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > sandboxMaxLimit {
			s.fail(w, badField("limit", "limit must be an integer from 1 to %d", sandboxMaxLimit))
			return
		}
		limit = n
	}
	p, err := st.Search(tenant, f, start, limit)
	if err != nil {
		s.sandboxFailed(w, "search the sandbox", err)
		return
	}
	s.writeJSON(w, http.StatusOK, sandboxPage{Total: p.Total, Start: p.Start, Count: p.Count, Messages: p.Messages})
}

func (s *Server) sandboxFailed(w http.ResponseWriter, what string, err error) {
	s.log.Error("sandbox: cannot "+what, "err", err)
	s.fail(w, errf(http.StatusServiceUnavailable, codeUnavailable, "", "cannot %s now, try again later", what))
}

// DELETE /v1/sandbox/messages
func (s *Server) sandboxDeleteAll(w http.ResponseWriter, r *http.Request, st *capture.Store) {
	tenant, e := s.suppTenant(r.Context(), r)
	if e != nil {
		s.fail(w, e)
		return
	}
	n, err := st.DeleteAll(tenant)
	if err != nil {
		s.sandboxFailed(w, "delete the sandbox's messages", err)
		return
	}
	s.writeJSON(w, http.StatusOK, map[string]int{"deleted": n})
}

// sandboxMessage finds tenant's message id or answers 404.
func (s *Server) sandboxMessage(w http.ResponseWriter, r *http.Request, st *capture.Store, id string) (string, *capture.Summary, bool) {
	tenant, e := s.suppTenant(r.Context(), r)
	if e != nil {
		s.fail(w, e)
		return "", nil, false
	}
	sm, ok := st.Get(tenant, id)
	if !ok {
		s.fail(w, noCapture(id))
		return "", nil, false
	}
	return tenant, sm, true
}

// sandboxBytes finds tenant's message id with its bytes, or answers.
func (s *Server) sandboxBytes(w http.ResponseWriter, r *http.Request, st *capture.Store, id string) (*capture.Summary, []byte, bool) {
	tenant, sm, ok := s.sandboxMessage(w, r, st, id)
	if !ok {
		return nil, nil, false
	}
	raw, found, err := st.Raw(tenant, id)
	if err != nil {
		s.sandboxFailed(w, "read the message", err)
		return nil, nil, false
	}
	if !found {
		s.fail(w, noCapture(id))
		return nil, nil, false
	}
	return sm, raw, true
}

func noCapture(id string) *apiError {
	return errf(http.StatusNotFound, codeNotFound, "", "no captured message %q in this sandbox", id)
}

type sandboxMessage struct {
	*capture.Summary
	*capture.Parsed
}

// GET /v1/sandbox/messages/{id}
func (s *Server) sandboxGet(w http.ResponseWriter, r *http.Request, st *capture.Store, id string) {
	sm, raw, ok := s.sandboxBytes(w, r, st, id)
	if !ok {
		return
	}
	s.writeJSON(w, http.StatusOK, sandboxMessage{Summary: sm, Parsed: capture.Parse(raw)})
}

// DELETE /v1/sandbox/messages/{id}
func (s *Server) sandboxDelete(w http.ResponseWriter, r *http.Request, st *capture.Store, id string) {
	tenant, e := s.suppTenant(r.Context(), r)
	if e != nil {
		s.fail(w, e)
		return
	}
	ok, err := st.Delete(tenant, id)
	if err != nil {
		s.sandboxFailed(w, "delete the message", err)
		return
	}
	if !ok {
		s.fail(w, noCapture(id))
		return
	}
	s.writeJSON(w, http.StatusOK, map[string]int{"deleted": 1})
}

// GET /v1/sandbox/messages/{id}/raw
func (s *Server) sandboxRaw(w http.ResponseWriter, r *http.Request, st *capture.Store, id string) {
	_, raw, ok := s.sandboxBytes(w, r, st, id)
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "message/rfc822")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(raw)
}

// GET /v1/sandbox/messages/{id}/events
func (s *Server) sandboxEvents(w http.ResponseWriter, r *http.Request, st *capture.Store, id string) {
	_, sm, ok := s.sandboxMessage(w, r, st, id)
	if !ok {
		return
	}
	evs, err := st.Events(sm)
	if err != nil {
		s.sandboxFailed(w, "read the events", err)
		return
	}
	s.writeJSON(w, http.StatusOK, struct {
		MessageID string           `json:"message_id"`
		Events    []pipeline.Event `json:"events"`
	}{sm.MessageID, evs})
}

type assertRequest struct {
	Checks []capture.Check `json:"checks"`
}

type assertAnswer struct {
	Passed  bool             `json:"passed"`
	Results []capture.Result `json:"results"`
}

// POST /v1/sandbox/messages/{id}/assert
func (s *Server) sandboxAssert(w http.ResponseWriter, r *http.Request, st *capture.Store, id string) {
	sm, raw, ok := s.sandboxBytes(w, r, st, id)
	if !ok {
		return
	}
	buf, e := s.readBody(w, r)
	if e != nil {
		s.fail(w, e)
		return
	}
	defer putBuf(buf)
	var req assertRequest
	dec := json.NewDecoder(buf)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		s.fail(w, jsonError(err))
		return
	}
	if len(req.Checks) == 0 {
		s.fail(w, missingField("checks"))
		return
	}
	if len(req.Checks) > maxChecks {
		s.fail(w, badField("checks", "at most %d checks", maxChecks))
		return
	}
	for i := range req.Checks {
		if field, msg := capture.ValidateCheck(&req.Checks[i]); field != "" {
			s.fail(w, badField(fmt.Sprintf("checks[%d].%s", i, field), "%s", msg))
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Minute)
	defer cancel()
	res := st.Assert(ctx, sm, raw, req.Checks)
	a := assertAnswer{Passed: true, Results: res}
	for _, x := range res {
		a.Passed = a.Passed && x.Passed
	}
	s.writeJSON(w, http.StatusOK, a)
}

// waitTimeout reads ?timeout= (a Go duration or seconds).
func waitTimeout(r *http.Request) (time.Duration, *apiError) {
	v := r.URL.Query().Get("timeout")
	if v == "" {
		return waitDefault, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		n, nerr := strconv.ParseFloat(v, 64)
		if nerr != nil {
			return 0, badField("timeout", "timeout must be a duration (30s, 2m) or seconds")
		}
		d = time.Duration(n * float64(time.Second))
	}
	if d <= 0 || d > waitMax {
		return 0, badField("timeout", "timeout must be more than 0 and at most %s", waitMax)
	}
	return d, nil
}

// GET /v1/sandbox/wait
func (s *Server) sandboxWait(w http.ResponseWriter, r *http.Request, st *capture.Store) {
	tenant, f, e := s.sandboxQuery(r, "timeout")
	if e != nil {
		s.fail(w, e)
		return
	}
	d, e := waitTimeout(r)
	if e != nil {
		s.fail(w, e)
		return
	}
	// The server's write timeout (5 minutes) runs from the request's
	// header: a wait as long would answer past it, to a closed connection.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(d + waitWriteSlack))
	ctx, cancel := context.WithTimeout(r.Context(), d)
	defer cancel()
	// A shutdown ends the wait (503) rather than waiting for it: http.Server's
	// Shutdown waits for in-flight requests, a wait can last 5 minutes.
	go func() {
		select {
		case <-s.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	sm, err := st.Wait(ctx, tenant, f)
	switch {
	case err == nil:
		s.writeJSON(w, http.StatusOK, sm)
	case stopped(s.stop) && r.Context().Err() == nil:
		s.fail(w, errf(http.StatusServiceUnavailable, codeUnavailable, "", "the sandbox is shutting down"))
	case errors.Is(err, context.DeadlineExceeded) && r.Context().Err() == nil:
		s.fail(w, errf(http.StatusRequestTimeout, codeWaitTimeout, "", "no matching message arrived within %s", d))
	case errors.Is(err, capture.ErrClosed):
		s.fail(w, errf(http.StatusServiceUnavailable, codeUnavailable, "", "the sandbox is shutting down"))
	case r.Context().Err() != nil:
		// The client went away.
	default:
		s.sandboxFailed(w, "wait for a message", err)
	}
}

// stopped reports whether stop is closed (the server is shutting down).
func stopped(stop <-chan struct{}) bool {
	select {
	case <-stop:
		return true
	default:
		return false
	}
}

// GET /v1/sandbox/stream: text/event-stream, one "message" event per
// captured message matching the filter, a comment every 15 s to keep
// proxies from closing the stream.
func (s *Server) sandboxStream(w http.ResponseWriter, r *http.Request, st *capture.Store) {
	tenant, f, e := s.sandboxQuery(r)
	if e != nil {
		s.fail(w, e)
		return
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		s.fail(w, errInternal)
		return
	}
	// A stream outlives the server's write timeout.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
	ch, cancel := st.Subscribe(tenant, f, streamBuffer)
	defer cancel()
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte(": sluice sandbox stream\n\n"))
	fl.Flush()
	tick := time.NewTicker(15 * time.Second)
	defer tick.Stop()
	for {
		select {
		case sm, ok := <-ch:
			if !ok {
				_, _ = w.Write([]byte("event: lagged\ndata: {}\n\n"))
				fl.Flush()
				return
			}
			b, _ := json.Marshal(sm)
			_, _ = fmt.Fprintf(w, "id: %s\nevent: message\ndata: %s\n\n", sm.ID, b)
			fl.Flush()
		case <-tick.C:
			_, _ = w.Write([]byte(": keep-alive\n\n"))
			fl.Flush()
		case <-r.Context().Done():
			return
		case <-s.stop:
			return
		}
	}
}
