package httpapi

import (
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/sluice-mta/sluice/internal/queue"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

type queuesPage struct {
	Queues []queue.QueueInfo `json:"queues"`
}

func (e *env) queueInfo(name string) (queue.QueueInfo, bool) {
	e.t.Helper()
	r := e.do(http.MethodGet, "/v1/queues", e.adminKey, nil)
	if r.Status != http.StatusOK {
		e.t.Fatalf("GET /v1/queues: %d %s", r.Status, r.Body)
	}
	var p queuesPage
	r.json(e.t, &p)
	for _, q := range p.Queues {
		if q.Name == name {
			return q, true
		}
	}
	return queue.QueueInfo{}, false
}

// A paused destination gets no attempts while its mail stays queued and
// listed; resume delivers it all; every action is an event naming the key.
func TestQueuePauseListResume(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.srv.UseQueue(e.q)
	name := "relay:127.0.0.1:" + itoa(e.sink.Port)
	qp := "/v1/queues/" + url.PathEscape(name)

	// Only the admin scope may.
	if r := e.do(http.MethodPost, qp+"/pause", e.sendKey, nil); r.Status != http.StatusForbidden {
		t.Fatalf("pause with a send key: %d %s", r.Status, r.Body)
	}
	r := e.do(http.MethodPost, qp+"/pause", e.adminKey, nil)
	var act QueueAction
	r.json(t, &act)
	if r.Status != http.StatusOK || act.Paused == nil || !*act.Paused || !*act.Changed || act.Queue != name {
		t.Fatalf("pause: %d %s", r.Status, r.Body)
	}
	const n = 5
	for i := 0; i < n; i++ {
		mustAccept(t, e.post("/v1/messages", map[string]any{"from": "a@example.com", "to": "b" + itoa(i) + "@dest.test",
			"subject": "held", "text": "held while paused"}))
	}
	// Paused: all n stay ready, none taken by a worker.
	qi, ok := e.queueInfo(name)
	if !ok || !qi.Paused || qi.Ready != n || qi.Waiting != 0 || qi.Oldest.IsZero() {
		t.Fatalf("queue while paused: %+v (found %v)", qi, ok)
	}
	if got := len(e.sink.Messages()); got != 0 {
		t.Fatalf("the sink got %d messages from a paused queue", got)
	}

	// Listed a page at a time.
	var ids []string
	cursor := ""
	for pages := 0; ; pages++ {
		path := qp + "/messages?limit=2"
		if cursor != "" {
			path += "&cursor=" + url.QueryEscape(cursor)
		}
		r := e.do(http.MethodGet, path, e.adminKey, nil)
		if r.Status != http.StatusOK {
			t.Fatalf("list: %d %s", r.Status, r.Body)
		}
		var page listAnswer
		r.json(t, &page)
		if len(page.Messages) > 2 {
			t.Fatalf("page of %d with limit 2", len(page.Messages))
		}
		for _, m := range page.Messages {
			ids = append(ids, m.ID)
			if len(m.Recipients) != 1 || m.Recipients[0].Queue != name || m.Recipients[0].State != "queued" {
				t.Fatalf("listed recipient: %+v", m.Recipients)
			}
		}
		if cursor = page.NextCursor; cursor == "" || pages > n {
			break
		}
	}
	if len(ids) != n {
		t.Fatalf("listed %d messages, want %d: %v", len(ids), n, ids)
	}
	if r := e.do(http.MethodGet, qp+"/messages?subject=x", e.adminKey, nil); r.Status != http.StatusBadRequest || r.errorOf(t).Field != "subject" {
		t.Fatalf("unknown parameter: %d %s", r.Status, r.Body)
	}

	r = e.do(http.MethodPost, qp+"/resume", e.adminKey, nil)
	r.json(t, &act)
	if r.Status != http.StatusOK || *act.Paused || !*act.Changed {
		t.Fatalf("resume: %d %s", r.Status, r.Body)
	}
	testutil.WaitFor(t, "every message delivered after resume", func() bool { return len(e.sink.Messages()) == n })
	testutil.WaitFor(t, "the spool empty", func() bool { return e.queued() == 0 })

	// The events: paused then resumed, by the admin key's id.
	adminID := keyID(t, e, e.adminKey)
	evs, err := e.sp.ReadOutbox(0, 10000)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ev := range evs {
		if strings.HasPrefix(ev.Type, "queue_") {
			testutil.ValidateEvent(t, ev.JSON)
			got = append(got, ev.Type)
			if !strings.Contains(string(ev.JSON), `"by":"`+adminID+`"`) || !strings.Contains(string(ev.JSON), `"queue":"`+name+`"`) {
				t.Errorf("event does not name the key %s and the queue: %s", adminID, ev.JSON)
			}
		}
	}
	if strings.Join(got, ",") != pipeline.EventQueuePaused+","+pipeline.EventQueueResumed {
		t.Fatalf("admin events: %v", got)
	}
}

// keyID is the id of an API key token (what events record as "by").
func keyID(t *testing.T, e *env, tok string) string {
	t.Helper()
	k, err := e.keys.Authenticate(tok)
	if err != nil {
		t.Fatal(err)
	}
	return k.ID
}

// A deferred message retried now is delivered without waiting for its
// backoff (an hour here); the queue listing shows it waiting with its
// last error until then.
func TestQueueRetryNow(t *testing.T) {
	e := newEnv(t, envOptions{retryFirst: time.Hour})
	e.srv.UseQueue(e.q)
	name := "relay:127.0.0.1:" + itoa(e.sink.Port)
	var refuse atomic.Bool
	refuse.Store(true)
	e.sink.OnRcpt = func(string) error {
		if refuse.Load() {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "try later"}
		}
		return nil
	}
	a := mustAccept(t, e.post("/v1/messages", map[string]any{"from": "a@example.com", "to": "b@dest.test", "subject": "s", "text": "t"}))
	b := mustAccept(t, e.post("/v1/messages", map[string]any{"from": "a@example.com", "to": "c@dest.test", "subject": "s", "text": "t"}))
	var qi queue.QueueInfo
	testutil.WaitFor(t, "both deferred", func() bool { qi, _ = e.queueInfo(name); return qi.Waiting == 2 })
	if qi.NextAttempt == nil || qi.NextAttempt.Before(time.Now().Add(30*time.Minute)) || qi.LastError == nil || qi.LastError.Code != 451 {
		t.Fatalf("deferred queue: %+v", qi)
	}
	refuse.Store(false)

	// One message.
	r := e.do(http.MethodPost, "/v1/messages/"+a.ID+"/retry", e.adminKey, nil)
	var act QueueAction
	r.json(t, &act)
	if r.Status != http.StatusOK || act.Recipients == nil || *act.Recipients != 1 || act.MessageID != a.ID {
		t.Fatalf("retry message: %d %s", r.Status, r.Body)
	}
	testutil.WaitFor(t, "the retried message delivered", func() bool { return len(e.sink.Messages()) == 1 })
	if m := e.sink.Messages()[0]; m.Rcpts[0] != "b@dest.test" {
		t.Fatalf("delivered %v, want the retried message", m.Rcpts)
	}
	if qi, _ = e.queueInfo(name); qi.Waiting != 1 {
		t.Fatalf("the other message should still wait: %+v", qi)
	}
	// A message not queued: 404 naming the id. The sink has the message
	// a moment before the queue records the delivery and forgets it
	// (until then the retry finds it in flight: 200, 0 recipients).
	testutil.WaitFor(t, "the delivered message forgotten", func() bool {
		r = e.do(http.MethodPost, "/v1/messages/"+a.ID+"/retry", e.adminKey, nil)
		return r.Status != http.StatusOK
	})
	if r.Status != http.StatusNotFound || r.errorOf(t).Field != "id" {
		t.Fatalf("retry of a delivered message: %d %s", r.Status, r.Body)
	}

	if r := e.do(http.MethodPost, "/v1/messages/not-an-id/retry", e.adminKey, nil); r.Status != http.StatusBadRequest || r.errorOf(t).Field != "id" {
		t.Fatalf("retry of a bad id: %d %s", r.Status, r.Body)
	}

	// Everything (postqueue -f).
	r = e.do(http.MethodPost, "/v1/queues/retry", e.adminKey, nil)
	r.json(t, &act)
	if r.Status != http.StatusOK || *act.Recipients != 1 {
		t.Fatalf("retry all: %d %s", r.Status, r.Body)
	}
	testutil.WaitFor(t, "the other message delivered", func() bool { return len(e.sink.Messages()) == 2 })
	testutil.WaitFor(t, "the spool empty", func() bool { return e.queued() == 0 })
	_ = b

	evs, err := e.sp.ReadOutbox(0, 10000)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ev := range evs {
		if ev.Type == pipeline.EventQueueRetried {
			testutil.ValidateEvent(t, ev.JSON)
			got = append(got, string(ev.JSON))
		}
	}
	if len(got) != 2 || !strings.Contains(got[0], `"message_id":"`+a.ID+`"`) || !strings.Contains(got[1], `"recipients":"1"`) {
		t.Fatalf("queue_retried events:\n%s", strings.Join(got, "\n"))
	}
}
