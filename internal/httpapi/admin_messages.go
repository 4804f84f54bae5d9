package httpapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/internal/apikey"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// ---- GET /v1/admin/messages ----

// listedRcpt is a queued or deferred recipient in a listing.
type listedRcpt struct {
	Email       string             `json:"email"`
	State       string             `json:"state"`
	Queue       string             `json:"queue"`
	Attempts    int                `json:"attempts"`
	NextAttempt *time.Time         `json:"next_attempt"`
	Response    *pipeline.Response `json:"response,omitempty"`
}

type listedMessage struct {
	ID         string       `json:"id"`
	Sender     string       `json:"sender"`
	Tenant     string       `json:"tenant"`
	Source     string       `json:"source"`
	Tags       []string     `json:"tags"`
	Received   time.Time    `json:"received"`
	Size       int          `json:"size"`
	Recipients []listedRcpt `json:"recipients"`
}

type listAnswer struct {
	Messages   []listedMessage `json:"messages"`
	NextCursor string          `json:"next_cursor,omitempty"`
}

// listParams are the query parameters of GET /v1/admin/messages.
var listParams = map[string]bool{"queue": true, "state": true, "sender": true, "rcpt_domain": true, "rcpt": true,
	"tenant": true, "before": true, "after": true, "older_than": true, "younger_than": true, "cursor": true, "limit": true}

// listFilter parses the listing's query parameters (the queue control
// actions take the same filters). An empty value is an absent parameter,
// except tenant, where it selects mail without a tenant. older_than and
// younger_than are durations before now.
func listFilter(q url.Values, now time.Time) (spool.ListFilter, *apiError) {
	var f spool.ListFilter
	for name, vs := range q {
		if !listParams[name] {
			return f, errf(http.StatusBadRequest, codeUnknownField, name, "unknown parameter %q", name)
		}
		if len(vs) > 1 {
			return f, badField(name, "%s is given more than once", name)
		}
	}
	f.Queue = q.Get("queue")
	if !validQueueName(f.Queue) {
		return f, badField("queue", "queue is not a queue name")
	}
	switch f.State = q.Get("state"); f.State {
	case "", spool.StateQueued, spool.StateDeferred, spool.StateHeld:
	default:
		return f, badField("state", "state must be %q, %q or %q", spool.StateQueued, spool.StateDeferred, spool.StateHeld)
	}
	switch v := q.Get("sender"); v {
	case "":
	case "<>":
		f.Sender = new(string) // the null sender
	default:
		if _, _, err := pipeline.SplitAddress(v); err != nil || len(v) > 320 {
			return f, badField("sender", "sender must be an address or <> (the null sender)")
		}
		f.Sender = &v
	}
	if v := q.Get("rcpt_domain"); v != "" {
		if _, _, err := pipeline.SplitAddress("x@" + v); err != nil || strings.Contains(v, "@") || len(v) > 255 {
			return f, badField("rcpt_domain", "rcpt_domain must be a domain")
		}
		f.RcptDomain = v
	}
	if v := q.Get("rcpt"); v != "" {
		if _, _, err := pipeline.SplitAddress(v); err != nil || len(v) > 320 {
			return f, badField("rcpt", "rcpt must be an address")
		}
		f.Recipient = v
	}
	if q.Has("tenant") {
		v := q.Get("tenant")
		if len(v) > 64 || strings.ContainsAny(v, " \t\r\n") {
			return f, badField("tenant", "tenant is not a tenant name")
		}
		f.Tenant = &v
	}
	for _, p := range []struct {
		name string
		t    *time.Time
	}{{"before", &f.Before}, {"after", &f.After}} {
		if v := q.Get(p.name); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return f, badField(p.name, "%s must be an RFC 3339 time, e.g. 2026-11-22T10:00:00Z", p.name)
			}
			*p.t = t
		}
	}
	// older_than: received before now-D, so it narrows before; younger_than
	// narrows after.
	for _, p := range []struct {
		name  string
		t     *time.Time
		older bool
	}{{"older_than", &f.Before, true}, {"younger_than", &f.After, false}} {
		v := q.Get(p.name)
		if v == "" {
			continue
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return f, badField(p.name, "%s must be a duration, e.g. 90m or 48h", p.name)
		}
		t := now.Add(-d)
		if p.t.IsZero() || p.older && t.Before(*p.t) || !p.older && t.After(*p.t) {
			*p.t = t
		}
	}
	if v := q.Get("cursor"); v != "" {
		if _, err := spool.DecodeCursor(v); err != nil {
			return f, badField("cursor", "cursor is not a next_cursor of this listing")
		}
		f.Cursor = v
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > spool.MaxListLimit {
			return f, badField("limit", "limit must be an integer from 1 to %d", spool.MaxListLimit)
		}
		f.Limit = n
	}
	return f, nil
}

// adminMessages lists the messages still in the spool (queued or
// deferred recipients) of every tenant, a page at a time.
func (s *Server) adminMessages(w http.ResponseWriter, r *http.Request) {
	if _, e := s.authenticate(r, apikey.ScopeAdmin); e != nil {
		s.fail(w, e)
		return
	}
	f, e := listFilter(r.URL.Query(), s.now())
	if e != nil {
		s.fail(w, e)
		return
	}
	s.listMessages(w, f)
}

// listMessages answers a page of the spool listing f.
func (s *Server) listMessages(w http.ResponseWriter, f spool.ListFilter) {
	p, err := s.sp.List(f)
	if errors.Is(err, spool.ErrBadCursor) {
		s.fail(w, badField("cursor", "cursor is not a next_cursor of this listing"))
		return
	}
	if err != nil {
		s.log.Error("cannot list messages", "err", err)
		s.fail(w, errf(http.StatusServiceUnavailable, codeUnavailable, "", "cannot read the spool now, try again later"))
		return
	}
	a := listAnswer{Messages: make([]listedMessage, 0, len(p.Messages)), NextCursor: p.Next}
	for _, m := range p.Messages {
		lm := listedMessage{ID: m.ID, Sender: m.Sender, Tenant: m.Tenant, Source: m.Source, Tags: m.Tags,
			Received: m.Received.UTC(), Size: m.Size, Recipients: make([]listedRcpt, 0, len(m.Recipients))}
		if lm.Tags == nil {
			lm.Tags = []string{}
		}
		for _, rc := range m.Recipients {
			lm.Recipients = append(lm.Recipients, listedRcpt{Email: rc.Address, State: rc.State, Queue: rc.Queue,
				Attempts: rc.Attempts, NextAttempt: nextAttempt(rc.State, rc.NextAttempt, m.Received), Response: rc.LastResponse})
		}
		a.Messages = append(a.Messages, lm)
	}
	b, err := json.Marshal(a)
	if err != nil {
		s.fail(w, errInternal)
		return
	}
	s.writeAnswer(w, answer{status: http.StatusOK, body: b})
}
