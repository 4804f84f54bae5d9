package httpapi

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"unicode"
	"unicode/utf8"

	"errors"

	"github.com/sluice-mta/sluice/internal/apikey"
	"github.com/sluice-mta/sluice/internal/queue"
)

// Queue control (docs/http-api.md#queue-control), admin scope:
//
//	GET  /v1/queues                     the queues: ready, waiting and held recipients, oldest, next attempt, last error
//	GET  /v1/queues/{q}/messages        the queue's messages, paged (as GET /v1/admin/messages?queue=q, same filters)
//	POST /v1/queues/{q}/{action}        retry, bounce, cancel, hold or release the queue's recipients (filters narrow it)
//	POST /v1/queues/{q}/pause           stop delivery attempts to it; mail stays queued
//	POST /v1/queues/{q}/resume          end the pause
//	POST /v1/queues/{action}            the action on every queue's recipients matching the filters
//	                                    (retry alone is postqueue -f; bounce and cancel need a filter or all=true)
//	POST /v1/messages/{id}/{action}     the action on one message's recipients (filters narrow it)
//
// Every POST records an event (queue_paused, queue_resumed,
// queue_retried, queue_bounced, queue_cancelled, queue_held,
// queue_released) with metadata.by = the API key id.

const queuesPath = "/v1/queues"

// UseQueue installs the node's delivery queue (nil: the queue endpoints
// answer 404). Call it before Serve.
func (s *Server) UseQueue(q *queue.Queue) { s.queue.Store(q) }

type queuesAnswer struct {
	Queues []queue.QueueInfo `json:"queues"`
}

// QueueAction is the answer of a queue control POST (sluice queue reads
// it too): the queue or message acted on, the action, and for pause and
// resume the state now and whether it changed, for the other actions the
// recipients acted on.
type QueueAction struct {
	Queue      string `json:"queue,omitempty"`
	MessageID  string `json:"message_id,omitempty"`
	Action     string `json:"action"`
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

// queueActions are the actions on queued recipients; each takes the
// listing's filters.
var queueActions = map[string]func(*queue.Queue, queue.Target, string) (int, error){
	"retry": (*queue.Queue).Retry, "bounce": (*queue.Queue).Bounce, "cancel": (*queue.Queue).Cancel,
	"hold": (*queue.Queue).Hold, "release": (*queue.Queue).Release,
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
	rest := strings.TrimPrefix(p, queuesPath+"/")
	if queueActions[rest] != nil {
		if s.method(w, r, http.MethodPost) {
			s.queueAction(w, r, "", "", rest)
		}
		return
	}
	i := strings.LastIndexByte(rest, '/')
	if i <= 0 {
		s.writeAnswer(w, errorAnswer(errNotFound, "", nil))
		return
	}
	name, action := rest[:i], rest[i+1:]
	if !validQueueName(name) || strings.Contains(name, "/") {
		s.fail(w, badField("queue", "%q is not a queue name", name))
		return
	}
	switch {
	case action == "messages":
		if s.method(w, r, http.MethodGet) {
			s.queueMessages(w, r, name)
		}
	case action == "pause" || action == "resume":
		if s.method(w, r, http.MethodPost) {
			s.queuePause(w, r, name, action)
		}
	case queueActions[action] != nil:
		if s.method(w, r, http.MethodPost) {
			s.queueAction(w, r, name, "", action)
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
	if v.Has("queue") {
		s.fail(w, errf(http.StatusBadRequest, codeUnknownField, "queue", "unknown parameter %q (the queue is in the path)", "queue"))
		return
	}
	v.Set("queue", name)
	f, e := listFilter(v, s.now())
	if e != nil {
		s.fail(w, e)
		return
	}
	s.listMessages(w, f)
}

// actionTarget parses the filters of a queue action: those of the
// listing without queue (the path names it), cursor and limit, plus
// all=true, which bounce and cancel of every queue need when no filter
// is given.
func (s *Server) actionTarget(v url.Values, name, msgID, action string) (queue.Target, *apiError) {
	all := v.Get("all")
	switch all {
	case "", "true":
	default:
		return queue.Target{}, badField("all", "all must be true")
	}
	v.Del("all")
	for _, n := range []string{"queue", "cursor", "limit"} {
		if v.Has(n) {
			return queue.Target{}, errf(http.StatusBadRequest, codeUnknownField, n, "unknown parameter %q", n)
		}
	}
	f, e := listFilter(v, s.now())
	if e != nil {
		return queue.Target{}, e
	}
	// From the parsed filter, not the query: an empty parameter (sender=)
	// is an absent filter and must not pass for one.
	filtered := f.State != "" || f.Sender != nil || f.RcptDomain != "" || f.Recipient != "" ||
		f.Tenant != nil || !f.After.IsZero() || !f.Before.IsZero()
	f.Queue = name
	if (action == "bounce" || action == "cancel") && name == "" && msgID == "" && !filtered && all != "true" {
		return queue.Target{}, badField("all", "%s of every queued recipient needs a filter, or all=true", action)
	}
	return queue.Target{MessageID: msgID, Filter: f}, nil
}

// queueAction applies action to the recipients of the queue name ("":
// every queue) or of message msgID, narrowed by the query's filters.
func (s *Server) queueAction(w http.ResponseWriter, r *http.Request, name, msgID, action string) {
	k, q, e := s.queueCaller(r)
	if e != nil {
		s.fail(w, e)
		return
	}
	if msgID != "" && !validULID(msgID) {
		s.fail(w, badField("id", "%q is not a message id (a ULID)", msgID))
		return
	}
	t, e := s.actionTarget(r.URL.Query(), name, msgID, action)
	if e != nil {
		s.fail(w, e)
		return
	}
	n, err := queueActions[action](q, t, k.ID)
	if errors.Is(err, queue.ErrNotQueued) {
		s.fail(w, errf(http.StatusNotFound, codeNotFound, "id", "message %s is not queued on this node", msgID))
		return
	}
	target := name
	if msgID != "" {
		target = msgID
	}
	if ie := (*queue.IncompleteError)(nil); errors.As(err, &ie) {
		// Stopped at a step the spool did not take: the steps before it
		// were recorded, that one and the rest are as they were.
		s.log.Error("queue action stopped part way; run it again to act on the rest", "action", action, "target", target, "by", k.ID,
			"recipients_done", ie.Done, "recipients_left_at_most", ie.Left, "err", ie.Err)
		s.fail(w, errf(http.StatusServiceUnavailable, codeUnavailable, "", "%s", incompleteText(action, ie)))
		return
	}
	s.logAdminEvent(err, action, target, k.ID)
	s.writeJSON(w, http.StatusOK, QueueAction{Queue: name, MessageID: msgID, Action: action, Recipients: &n})
}

// incompleteText is the answer to an action that stopped part way.
// A step that could not be read back from the spool (ie.Unread) is told
// from one the spool refused to record.
func incompleteText(action string, ie *queue.IncompleteError) string {
	if ie.Done == 0 {
		if ie.Unread {
			return fmt.Sprintf("cannot read the queued recipients back from the spool for the %s now (nothing changed), try again later", action)
		}
		return fmt.Sprintf("cannot record the %s now (nothing changed), try again later", action)
	}
	done := map[string]string{"bounce": "bounced", "cancel": "cancelled", "hold": "held", "release": "released"}[action]
	what := "the spool could not record the rest"
	if ie.Unread {
		what = "the rest could not be read back from the spool"
	}
	text := fmt.Sprintf("%d recipients %s, then %s (at most %d more recipients, as they were): run it again to %s the rest",
		ie.Done, done, what, ie.Left, action)
	if ie.EventErr != nil {
		text += fmt.Sprintf("; the spool refused this %s's event too, so the relay's log line is its only record", action)
	}
	return text
}

// queuePause pauses or resumes the queue name.
func (s *Server) queuePause(w http.ResponseWriter, r *http.Request, name, action string) {
	k, q, e := s.queueCaller(r)
	if e != nil {
		s.fail(w, e)
		return
	}
	for n := range r.URL.Query() {
		s.fail(w, errf(http.StatusBadRequest, codeUnknownField, n, "unknown parameter %q", n))
		return
	}
	var (
		changed bool
		err     error
	)
	if action == "pause" {
		changed, err = q.Pause(name, k.ID)
	} else {
		changed, err = q.Resume(name, k.ID)
	}
	paused := action == "pause"
	s.logAdminEvent(err, action, name, k.ID)
	s.writeJSON(w, http.StatusOK, QueueAction{Queue: name, Action: action, Paused: &paused, Changed: &changed})
}

// messageAction handles POST /v1/messages/{id}/{action}.
func (s *Server) messageAction(w http.ResponseWriter, r *http.Request, id, action string) {
	s.queueAction(w, r, "", id, action)
}

// logAdminEvent logs a failure to record an admin action's event or an
// outcome; the action applied (for bounce and cancel, to the recipients
// whose outcome was recorded).
func (s *Server) logAdminEvent(err error, action, target, by string) {
	if err != nil {
		s.log.Error("queue action applied but not all of it could be recorded", "action", action, "target", target, "by", by, "err", err)
	}
}

// validQueueName reports whether name can be a queue name: a domain,
// relay:host:port or a site, at most 300 bytes of UTF-8 without spaces
// or control characters (a pause of any other name would be kept in the
// spool and listed for ever).
func validQueueName(name string) bool {
	return len(name) <= 300 && utf8.ValidString(name) &&
		!strings.ContainsFunc(name, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) })
}
