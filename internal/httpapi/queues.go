package httpapi

import (
	"net/http"
	"strings"

	"github.com/sluice-mta/sluice/internal/apikey"
	"github.com/sluice-mta/sluice/internal/queue"
)

// Queue control (docs/http-api.md#queue-control), admin scope:
//
//	GET  /v1/queues                  the queues: ready and waiting recipients, oldest, next attempt, last error
//	GET  /v1/queues/{q}/messages     the queue's messages, paged (as GET /v1/admin/messages?queue=q)
//	POST /v1/queues/{q}/retry        make its waiting recipients ready now, ignoring backoff
//	POST /v1/queues/{q}/pause        stop delivery attempts to it; mail stays queued
//	POST /v1/queues/{q}/resume       end the pause
//	POST /v1/queues/retry            retry every queue (postqueue -f)
//	POST /v1/messages/{id}/retry     retry one message's waiting recipients now
//
// Every POST records an event (queue_paused, queue_resumed,
// queue_retried) with metadata.by = the API key id.

const queuesPath = "/v1/queues"

// UseQueue installs the node's delivery queue (nil: the queue endpoints
// answer 404). Call it before Serve.
func (s *Server) UseQueue(q *queue.Queue) { s.queue.Store(q) }

type queuesAnswer struct {
	Queues []queue.QueueInfo `json:"queues"`
}

// QueueAction is the answer of a queue control POST (sluice queue reads
// it too): the queue or message acted on, and for pause and resume the
// state now and whether it changed, for a retry the recipients moved.
type QueueAction struct {
	Queue      string `json:"queue,omitempty"`
	MessageID  string `json:"message_id,omitempty"`
	Paused     *bool  `json:"paused,omitempty"`
	Changed    *bool  `json:"changed,omitempty"`
	Recipients *int   `json:"recipients,omitempty"`
}

// queueCaller authenticates an admin key and finds the queue.
func (s *Server) queueCaller(r *http.Request) (*caller, *queue.Queue, *apiError) {
	q := s.queue.Load()
	if q == nil {
		return nil, nil, errf(http.StatusNotFound, codeNotFound, "", "this server has no delivery queue")
	}
	k, e := s.authenticate(r, apikey.ScopeAdmin)
	if e != nil {
		return nil, nil, e
	}
	return k, q, nil
}

// queuesAPI routes /v1/queues and /v1/queues/{q}/....
func (s *Server) queuesAPI(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	if p == queuesPath {
		if !s.method(w, r, http.MethodGet) {
			return
		}
		_, q, e := s.queueCaller(r)
		if e != nil {
			s.fail(w, e)
			return
		}
		s.writeJSON(w, http.StatusOK, queuesAnswer{Queues: q.Queues()})
		return
	}
	if p == queuesPath+"/retry" {
		if s.method(w, r, http.MethodPost) {
			s.queueAction(w, r, "", "retry")
		}
		return
	}
	rest := strings.TrimPrefix(p, queuesPath+"/")
	i := strings.LastIndexByte(rest, '/')
	if i <= 0 {
		s.writeAnswer(w, errorAnswer(errNotFound, "", nil))
		return
	}
	name, action := rest[:i], rest[i+1:]
	if len(name) > 300 || strings.ContainsAny(name, " \t\r\n/") {
		s.fail(w, badField("queue", "%q is not a queue name", name))
		return
	}
	switch action {
	case "messages":
		if s.method(w, r, http.MethodGet) {
			s.queueMessages(w, r, name)
		}
	case "retry", "pause", "resume":
		if s.method(w, r, http.MethodPost) {
			s.queueAction(w, r, name, action)
		}
	default:
		s.writeAnswer(w, errorAnswer(errNotFound, "", nil))
	}
}

func (s *Server) queueMessages(w http.ResponseWriter, r *http.Request, name string) {
	if _, _, e := s.queueCaller(r); e != nil {
		s.fail(w, e)
		return
	}
	v := r.URL.Query()
	for n := range v {
		if n != "cursor" && n != "limit" && n != "state" {
			s.fail(w, errf(http.StatusBadRequest, codeUnknownField, n, "unknown parameter %q", n))
			return
		}
	}
	v.Set("queue", name)
	f, e := listFilter(v)
	if e != nil {
		s.fail(w, e)
		return
	}
	s.listMessages(w, f)
}

// queueAction pauses, resumes or retries the queue name ("" with retry:
// every queue).
func (s *Server) queueAction(w http.ResponseWriter, r *http.Request, name, action string) {
	k, q, e := s.queueCaller(r)
	if e != nil {
		s.fail(w, e)
		return
	}
	if len(r.URL.Query()) > 0 {
		for n := range r.URL.Query() {
			s.fail(w, errf(http.StatusBadRequest, codeUnknownField, n, "unknown parameter %q", n))
			return
		}
	}
	a := QueueAction{Queue: name}
	var err error
	switch action {
	case "retry":
		var n int
		n, err = q.RetryQueue(name, k.ID)
		a.Recipients = &n
	case "pause", "resume":
		var changed bool
		if action == "pause" {
			changed, err = q.Pause(name, k.ID)
		} else {
			changed, err = q.Resume(name, k.ID)
		}
		paused := action == "pause"
		a.Paused, a.Changed = &paused, &changed
	}
	s.logAdminEvent(err, action, name, k.ID)
	s.writeJSON(w, http.StatusOK, a)
}

// messageRetry handles POST /v1/messages/{id}/retry.
func (s *Server) messageRetry(w http.ResponseWriter, r *http.Request, id string) {
	k, q, e := s.queueCaller(r)
	if e != nil {
		s.fail(w, e)
		return
	}
	if !validULID(id) {
		s.fail(w, badField("id", "%q is not a message id (a ULID)", id))
		return
	}
	n, queued, err := q.RetryMessage(id, k.ID)
	if !queued {
		s.fail(w, errf(http.StatusNotFound, codeNotFound, "id", "message %s is not queued on this node", id))
		return
	}
	s.logAdminEvent(err, "retry", id, k.ID)
	s.writeJSON(w, http.StatusOK, QueueAction{MessageID: id, Recipients: &n})
}

// logAdminEvent logs a failure to record an admin action's event; the
// action itself applied.
func (s *Server) logAdminEvent(err error, action, target, by string) {
	if err != nil {
		s.log.Error("queue action applied but its event could not be recorded", "action", action, "target", target, "by", by, "err", err)
	}
}
