package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/apikey"
	"github.com/sluice-mta/sluice/internal/relay"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// submitSMTP queues a message as the SMTP source does for a client that
// did not authenticate: source smtp, no identity, no tenant.
func (e *env) submitSMTP(from string, to ...string) string {
	e.t.Helper()
	ctx := context.Background()
	sess := e.relay.NewSession(&pipeline.Conn{Source: pipeline.SourceSMTP, Listener: "127.0.0.1:2525", RelayNetwork: true})
	txn, err := sess.Begin(ctx, from, nil, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, a := range to {
		if _, err := txn.Rcpt(ctx, a); err != nil {
			e.t.Fatal(err)
		}
	}
	msg, err := pipeline.ParseMessage(txn.T, []byte("Subject: hi\r\n\r\nhello\r\n"))
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := txn.Commit(ctx, msg, relay.CommitOptions{OneReply: true}); err != nil {
		e.t.Fatal(err)
	}
	return txn.ID()
}

func (e *env) status(key, id string) (statusAnswer, resp) {
	e.t.Helper()
	r := e.do("GET", "/v1/messages/"+id, key, nil)
	var st statusAnswer
	if r.Status == 200 {
		r.json(e.t, &st)
	}
	return st, r
}

// Who sees which message: a send key its tenant's only, an admin key
// every message, SMTP mail (no tenant) included.
func TestMessageVisibility(t *testing.T) {
	e := newEnv(t, envOptions{noDelivery: true})
	a := mustAccept(t, e.post("/v1/messages", map[string]any{"from": "a@example.com", "to": "b@dest.test"}))
	smtpID := e.submitSMTP("ops@local.test", "x@dest.test", "y@dest.test")
	otherAdmin := e.createKey(apikey.CreateOptions{Tenant: "other", Scopes: []string{apikey.ScopeAdmin}})
	both := e.createKey(apikey.CreateOptions{Tenant: "acme", Scopes: []string{apikey.ScopeSend, apikey.ScopeAdmin}})

	cases := []struct {
		name, key, id string
		status        int
	}{
		{"send key, own tenant", e.sendKey, a.ID, 200},
		{"send key, other tenant", e.otherKey, a.ID, 404},
		{"send key, SMTP mail", e.sendKey, smtpID, 404},
		{"admin key, own tenant", e.adminKey, a.ID, 200},
		{"admin key, other tenant", otherAdmin, a.ID, 200},
		{"admin key, SMTP mail", e.adminKey, smtpID, 200},
		{"send and admin key, SMTP mail", both, smtpID, 200},
		{"no key", "", a.ID, 401},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, r := e.status(c.key, c.id)
			if r.Status != c.status {
				t.Fatalf("status %d, want %d: %s", r.Status, c.status, r.Body)
			}
			if c.status == 404 {
				if er := r.errorOf(t); er.Code != codeNotFound {
					t.Fatalf("error %+v", er)
				}
			}
		})
	}

	st, _ := e.status(e.adminKey, smtpID)
	if st.ID != smtpID || st.Tenant != "" || st.Source != "smtp" || st.Sender != "ops@local.test" || st.Size == 0 ||
		st.Received.IsZero() || st.Tags == nil || st.Metadata == nil || len(st.Recipients) != 2 || len(st.Events) != 2 {
		t.Fatalf("SMTP message status %+v", st)
	}
	for _, rc := range st.Recipients {
		if rc.State != "queued" || rc.Queue == "" || rc.Attempts != 0 || rc.NextAttempt == nil || rc.Response != nil {
			t.Errorf("recipient %+v", rc)
		}
	}
}

// A recipient whose destination is down is deferred: attempts, the last
// reply and the next attempt come from its live record.
func TestMessageStatusDeferred(t *testing.T) {
	e := newEnv(t, envOptions{stageConfig: func(s *testStage) {
		s.route = func(m *pipeline.Message, r *pipeline.Recipient) pipeline.Verdict {
			if r.Domain == "down.test" { // nothing listens on port 1
				return pipeline.RouteVerdict(&pipeline.Route{Kind: pipeline.RouteRelay, Host: "127.0.0.1", Port: 1, TLS: pipeline.TLSNone})
			}
			return pipeline.Verdict{}
		}
	}})
	a := mustAccept(t, e.post("/v1/messages", map[string]any{"from": "a@example.com", "to": []string{"ok@dest.test", "x@down.test"}}))
	var st statusAnswer
	testutil.WaitFor(t, "one delivered, one deferred", func() bool {
		st, _ = e.status(e.sendKey, a.ID)
		return len(st.Recipients) == 2 && st.Recipients[0].State == "delivered" && st.Recipients[1].State == "deferred"
	})
	ok, down := st.Recipients[0], st.Recipients[1]
	if ok.Email != "ok@dest.test" || ok.Attempts != 1 || ok.NextAttempt != nil || ok.Response == nil || ok.Response.Code != 250 {
		t.Errorf("delivered %+v", ok)
	}
	if down.Email != "x@down.test" || down.Queue != "relay:127.0.0.1:1" || down.Attempts < 1 || down.NextAttempt == nil ||
		down.Response == nil || down.Response.Code/100 != 4 || down.Updated.IsZero() {
		t.Errorf("deferred %+v", down)
	}
	if !strings.Contains(string(e.do("GET", "/v1/messages/"+a.ID, e.sendKey, nil).Body), `"next_attempt":"`) {
		t.Error("no next_attempt in the JSON")
	}

	// The admin listing shows it as deferred, and nothing as queued.
	var l listAnswer
	e.do("GET", "/v1/admin/messages?state=deferred", e.adminKey, nil).json(t, &l)
	if len(l.Messages) != 1 || l.Messages[0].ID != a.ID || len(l.Messages[0].Recipients) != 1 ||
		l.Messages[0].Recipients[0].Email != "x@down.test" || l.Messages[0].Recipients[0].Attempts < 1 {
		t.Fatalf("deferred listing %+v", l)
	}
	l = listAnswer{}
	e.do("GET", "/v1/admin/messages?state=queued", e.adminKey, nil).json(t, &l)
	if len(l.Messages) != 0 {
		t.Fatalf("queued listing %+v", l)
	}
}

// list follows next_cursor to the end.
func (e *env) list(key, query string) (ids []string, pages int) {
	e.t.Helper()
	cursor := ""
	for {
		q := query
		if cursor != "" {
			q += "&cursor=" + url.QueryEscape(cursor)
		}
		r := e.do("GET", "/v1/admin/messages?"+q, key, nil)
		if r.Status != 200 {
			e.t.Fatalf("list %q: %d %s", q, r.Status, r.Body)
		}
		var l listAnswer
		r.json(e.t, &l)
		if l.Messages == nil {
			e.t.Fatalf("no messages array in %s", r.Body)
		}
		pages++
		for _, m := range l.Messages {
			if slices.Contains(ids, m.ID) {
				e.t.Fatalf("message %s listed twice", m.ID)
			}
			ids = append(ids, m.ID)
		}
		if l.NextCursor == "" {
			return ids, pages
		}
		cursor = l.NextCursor
		if pages > 100 {
			e.t.Fatal("listing does not end")
		}
	}
}

func TestAdminMessages(t *testing.T) {
	e := newEnv(t, envOptions{noDelivery: true})
	start := time.Now().UTC()
	var acme []string
	for i := 0; i < 5; i++ {
		to := fmt.Sprintf("r%d@dom%d.test", i, i%2)
		acme = append(acme, mustAccept(t, e.post("/v1/messages", map[string]any{"from": "App@Example.com", "to": to})).ID)
	}
	smtpID := e.submitSMTP("ops@local.test", "x@dom1.test")
	all := append(slices.Clone(acme), smtpID)

	if r := e.do("GET", "/v1/admin/messages", e.sendKey, nil); r.Status != 403 {
		t.Fatalf("send key: %d", r.Status)
	}
	if r := e.do("GET", "/v1/admin/messages", "", nil); r.Status != 401 {
		t.Fatalf("no key: %d", r.Status)
	}

	var l listAnswer
	e.do("GET", "/v1/admin/messages?limit=1", e.adminKey, nil).json(t, &l)
	if len(l.Messages) != 1 || l.NextCursor == "" {
		t.Fatalf("first page %+v", l)
	}
	m := l.Messages[0]
	if m.ID != acme[0] || m.Tenant != "acme" || m.Source != "http" || m.Sender != "App@Example.com" || m.Size == 0 ||
		m.Received.Before(start.Add(-time.Second)) || len(m.Recipients) != 1 {
		t.Fatalf("entry %+v", m)
	}
	if rc := m.Recipients[0]; rc.Email != "r0@dom0.test" || rc.State != "queued" || rc.Attempts != 0 ||
		rc.NextAttempt == nil || !strings.HasPrefix(rc.Queue, "relay:127.0.0.1:") {
		t.Fatalf("recipient %+v", rc)
	}

	future := url.QueryEscape(time.Now().Add(time.Hour).Format(time.RFC3339))
	past := url.QueryEscape(start.Add(-time.Hour).Format(time.RFC3339Nano))
	cases := []struct {
		query string
		want  []string
	}{
		{"", all},
		{"limit=2", all},
		{"limit=1000", all},
		{"tenant=acme", acme},
		{"tenant=", []string{smtpID}},
		{"tenant=other", nil},
		{"sender=app@EXAMPLE.COM", nil},
		{"sender=App@example.COM", acme},
		{"sender=%3C%3E", nil},
		{"rcpt_domain=DOM1.test&limit=1", []string{acme[1], acme[3], smtpID}},
		{"queue=" + url.QueryEscape(fmt.Sprintf("relay:127.0.0.1:%d", e.sink.Port)), all},
		{"queue=dom0.test", nil},
		{"state=queued", all},
		{"state=deferred", nil},
		{"after=" + future, nil},
		{"before=" + future + "&after=" + past, all},
		{"before=" + past, nil},
		{"tenant=acme&rcpt_domain=dom0.test&state=queued&limit=1", []string{acme[0], acme[2], acme[4]}},
		{"queue=&state=&sender=&rcpt_domain=&before=&after=&cursor=&limit=", all}, // empty = absent
	}
	for _, c := range cases {
		t.Run(c.query, func(t *testing.T) {
			got, _ := e.list(e.adminKey, c.query)
			if !slices.Equal(got, c.want) {
				t.Fatalf("got %v, want %v", got, c.want)
			}
		})
	}
	if _, pages := e.list(e.adminKey, "limit=2"); pages != 3 {
		t.Errorf("6 messages, 2 a page: %d pages", pages)
	}
	// An admin key of another tenant lists every tenant too.
	if got, _ := e.list(e.createKey(apikey.CreateOptions{Tenant: "other", Scopes: []string{apikey.ScopeAdmin}}), ""); !slices.Equal(got, all) {
		t.Errorf("other tenant's admin: %v", got)
	}

	bad := []struct{ query, field, code string }{
		{"state=delivered", "state", codeInvalidField},
		{"limit=0", "limit", codeInvalidField},
		{"limit=1001", "limit", codeInvalidField},
		{"limit=ten", "limit", codeInvalidField},
		{"before=yesterday", "before", codeInvalidField},
		{"after=2026-13-01T00:00:00Z", "after", codeInvalidField},
		{"cursor=not-a-cursor", "cursor", codeInvalidField},
		{"sender=nobody", "sender", codeInvalidField},
		{"rcpt_domain=a@b.test", "rcpt_domain", codeInvalidField},
		{"rcpt_domain=a..b", "rcpt_domain", codeInvalidField},
		{"state=queued&state=deferred", "state", codeInvalidField},
		{"subject=x", "subject", codeUnknownField},
		{"rcpt=nobody", "rcpt", codeInvalidField},
		{"older_than=2d", "older_than", codeInvalidField},
	}
	for _, c := range bad {
		t.Run("bad "+c.query, func(t *testing.T) {
			r := e.do("GET", "/v1/admin/messages?"+c.query, e.adminKey, nil)
			if r.Status != 400 {
				t.Fatalf("status %d: %s", r.Status, r.Body)
			}
			if er := r.errorOf(t); er.Field != c.field || er.Code != c.code || er.Message == "" {
				t.Fatalf("error %+v, want field %q code %q", er, c.field, c.code)
			}
		})
	}
	if r := e.do("POST", "/v1/admin/messages", e.adminKey, "{}"); r.Status != 405 {
		t.Errorf("POST: %d", r.Status)
	}
}

// The listing's parameters are the ones openapi.json and docs/http-api.md
// describe, no more, no fewer.
func TestAdminMessagesDocumented(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]struct {
			Parameters []struct {
				Name string `json:"name"`
				In   string `json:"in"`
			} `json:"parameters"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(openAPI, &doc); err != nil {
		t.Fatal(err)
	}
	op, ok := doc.Paths["/v1/admin/messages"]["get"]
	if !ok {
		t.Fatal("openapi.json lacks GET /v1/admin/messages")
	}
	documented := map[string]bool{}
	for _, p := range op.Parameters {
		if p.In == "query" {
			documented[p.Name] = true
		}
	}
	md, err := os.ReadFile("../../docs/http-api.md")
	if err != nil {
		t.Fatal(err)
	}
	sec := string(md)
	i := strings.Index(sec, "### GET /v1/admin/messages")
	if i < 0 {
		t.Fatal("docs/http-api.md lacks a GET /v1/admin/messages section")
	}
	sec = sec[i+1:]
	if j := strings.Index(sec, "\n### "); j >= 0 {
		sec = sec[:j]
	}
	for name := range listParams {
		if !documented[name] {
			t.Errorf("openapi.json does not document parameter %q", name)
		}
		if !strings.Contains(sec, "`"+name+"`") {
			t.Errorf("docs/http-api.md does not document parameter %q", name)
		}
	}
	for name := range documented {
		if !listParams[name] {
			t.Errorf("openapi.json documents parameter %q, which the server refuses", name)
		}
	}
}
