package httpapi

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/sluice-mta/sluice/internal/testutil"
)

// The actions over HTTP: hold a message, see it listed as held (and
// filtered by rcpt), release it; cancel a queue's recipients by domain;
// bounce of everything needs a filter or all=true; an unknown message
// is 404; a bad filter names its parameter. Answers validate against
// the OpenAPI document (env.do).
func TestQueueActionsHTTP(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.srv.UseQueue(e.q)
	name := "relay:127.0.0.1:" + itoa(e.sink.Port)
	qp := "/v1/queues/" + url.PathEscape(name)
	if r := e.do(http.MethodPost, qp+"/pause", e.adminKey, nil); r.Status != http.StatusOK {
		t.Fatalf("pause: %d %s", r.Status, r.Body)
	}
	a := mustAccept(t, e.post("/v1/messages", map[string]any{"from": "a@example.com", "to": []string{"x@keep.test", "y@drop.test"}, "subject": "s", "text": "t"}))
	mustAccept(t, e.post("/v1/messages", map[string]any{"from": "a@example.com", "to": "z@drop.test", "subject": "s", "text": "t"}))

	act := func(path string, wantStatus, wantN int) {
		t.Helper()
		r := e.do(http.MethodPost, path, e.adminKey, nil)
		if r.Status != wantStatus {
			t.Fatalf("POST %s: %d %s", path, r.Status, r.Body)
		}
		if wantStatus != http.StatusOK {
			return
		}
		var a QueueAction
		r.json(t, &a)
		if a.Recipients == nil || *a.Recipients != wantN {
			t.Fatalf("POST %s: %s, want %d recipients", path, r.Body, wantN)
		}
	}
	act("/v1/messages/"+a.ID+"/hold?rcpt=x@keep.test", http.StatusOK, 1)
	var page listAnswer
	r := e.do(http.MethodGet, qp+"/messages?state=held", e.adminKey, nil)
	r.json(t, &page)
	if len(page.Messages) != 1 || len(page.Messages[0].Recipients) != 1 || page.Messages[0].Recipients[0].Email != "x@keep.test" ||
		page.Messages[0].Recipients[0].State != "held" {
		t.Fatalf("held listing: %s", r.Body)
	}
	if qi, _ := e.queueInfo(name); qi.Held != 1 || qi.Ready != 2 {
		t.Fatalf("queue: %+v", qi)
	}
	act("/v1/queues/bounce", http.StatusBadRequest, 0)
	// An empty parameter is an absent filter: it must not stand for the
	// filter that bounce and cancel of every queue need.
	act("/v1/queues/cancel?sender=", http.StatusBadRequest, 0)
	act("/v1/queues/bounce?rcpt_domain=&older_than=", http.StatusBadRequest, 0)
	act("/v1/queues/cancel?all=yes", http.StatusBadRequest, 0)
	act("/v1/queues/cancel?older_than=soon", http.StatusBadRequest, 0)
	act(qp+"/cancel?cursor=x", http.StatusBadRequest, 0)
	// A name no queue can have is refused, not paused and kept for ever.
	act("/v1/queues/a%00b/pause", http.StatusBadRequest, 0)
	act("/v1/queues/x%C3%28/pause", http.StatusBadRequest, 0)
	act("/v1/messages/01KB2T0A5V0W9X8Y7Z6A5B4C3D/bounce", http.StatusNotFound, 0)
	act(qp+"/cancel?rcpt_domain=drop.test", http.StatusOK, 2)
	act("/v1/queues/release?state=held", http.StatusOK, 1)
	if r := e.do(http.MethodPost, qp+"/resume", e.adminKey, nil); r.Status != http.StatusOK {
		t.Fatalf("resume: %d %s", r.Status, r.Body)
	}
	testutil.WaitFor(t, "the kept recipient delivered", func() bool { return len(e.sink.Messages()) == 1 })
	testutil.WaitFor(t, "the spool empty", func() bool { return e.queued() == 0 })
	if m := e.sink.Messages()[0]; len(m.Rcpts) != 1 || m.Rcpts[0] != "x@keep.test" {
		t.Fatalf("delivered %v", m.Rcpts)
	}
}
