package httpapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

func outboxEvents(t *testing.T, sp *spool.Spool, typ string) []pipeline.Event {
	t.Helper()
	evs, err := sp.ReadOutbox(0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var out []pipeline.Event
	for _, oe := range evs {
		if oe.Type != typ {
			continue
		}
		var ev pipeline.Event
		if err := json.Unmarshal(oe.JSON, &ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

func TestSuppressionsAPI(t *testing.T) {
	e := newEnv(t, envOptions{noDelivery: true})
	var ent suppressionEntry

	r := e.do("POST", "/v1/suppressions", e.sendKey, map[string]any{"address": "Gone@Dest.TEST", "reason": "asked to stop"})
	if r.Status != http.StatusCreated {
		t.Fatalf("POST: %d %s", r.Status, r.Body)
	}
	r.json(t, &ent)
	if ent.Address != "Gone@dest.test" || ent.Tenant != "acme" || ent.Source != "api" || ent.Reason != "asked to stop" || ent.Created.IsZero() {
		t.Errorf("entry %+v", ent)
	}
	if r := e.do("POST", "/v1/suppressions", e.sendKey, map[string]any{"address": "Gone@dest.test", "reason": "again", "source": "cli"}); r.Status != http.StatusOK {
		t.Errorf("POST again: %d %s; want 200 (replaced)", r.Status, r.Body)
	}
	r = e.do("GET", "/v1/suppressions/"+url.PathEscape("Gone@DEST.test"), e.sendKey, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("GET one: %d %s", r.Status, r.Body)
	}
	r.json(t, &ent)
	if ent.Reason != "again" || ent.Source != "cli" {
		t.Errorf("entry after replace %+v", ent)
	}
	// Tenant scoped: another tenant's key does not see it; the local
	// part's case matters.
	for _, c := range []struct{ key, addr string }{{e.otherKey, "Gone@dest.test"}, {e.sendKey, "gone@dest.test"}} {
		if r := e.do("GET", "/v1/suppressions/"+c.addr, c.key, nil); r.Status != http.StatusNotFound || r.errorOf(t).Field != "address" {
			t.Errorf("GET %s: %d %s; want 404 naming address", c.addr, r.Status, r.Body)
		}
	}

	// Field errors.
	for _, c := range []struct {
		name, method, path, key string
		body                    any
		status                  int
		code, field             string
	}{
		{"no address", "POST", "/v1/suppressions", e.sendKey, map[string]any{"reason": "x"}, 400, codeMissingField, "address"},
		{"bad address", "POST", "/v1/suppressions", e.sendKey, map[string]any{"address": "not-an-address"}, 400, codeInvalidField, "address"},
		{"address not a string", "POST", "/v1/suppressions", e.sendKey, map[string]any{"address": 5}, 400, codeInvalidField, "address"},
		{"unknown field", "POST", "/v1/suppressions", e.sendKey, map[string]any{"address": "a@b.test", "why": "x"}, 400, codeUnknownField, "why"},
		{"reason too long", "POST", "/v1/suppressions", e.sendKey, map[string]any{"address": "a@b.test", "reason": strings.Repeat("x", 1001)}, 400, codeInvalidField, "reason"},
		{"reason with CRLF", "POST", "/v1/suppressions", e.sendKey, map[string]any{"address": "a@b.test", "reason": "a\r\nb"}, 400, codeInvalidField, "reason"},
		{"bad source", "POST", "/v1/suppressions", e.sendKey, map[string]any{"address": "a@b.test", "source": "bounce"}, 400, codeInvalidField, "source"},
		{"not JSON", "POST", "/v1/suppressions", e.sendKey, "[1,2]", 400, codeInvalidJSON, ""},
		{"no key", "GET", "/v1/suppressions", "", nil, 401, codeUnauthorized, ""},
		{"tenant without admin", "GET", "/v1/suppressions?tenant=other", e.sendKey, nil, 403, codeForbidden, "tenant"},
		{"bad tenant", "GET", "/v1/suppressions?tenant=a%20b", e.adminKey, nil, 400, codeInvalidField, "tenant"},
		{"bad limit", "GET", "/v1/suppressions?limit=0", e.sendKey, nil, 400, codeInvalidField, "limit"},
		{"bad cursor", "GET", "/v1/suppressions?cursor=%21%21", e.sendKey, nil, 400, codeInvalidField, "cursor"},
		{"unknown parameter", "GET", "/v1/suppressions?page=2", e.sendKey, nil, 400, codeUnknownField, "page"},
		{"bad address in path", "DELETE", "/v1/suppressions/nope", e.sendKey, nil, 400, codeInvalidField, "address"},
		{"method", "PUT", "/v1/suppressions", e.sendKey, nil, 405, codeMethodNotAllowed, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := e.do(c.method, c.path, c.key, c.body)
			if r.Status != c.status {
				t.Fatalf("%d %s; want %d", r.Status, r.Body, c.status)
			}
			if er := r.errorOf(t); er.Code != c.code || er.Field != c.field {
				t.Errorf("error %+v; want code %s field %q", er, c.code, c.field)
			}
		})
	}

	// Paging, in address order, tenant by tenant.
	for i := 0; i < 5; i++ {
		if r := e.do("POST", "/v1/suppressions", e.sendKey, map[string]any{"address": fmt.Sprintf("p%d@dest.test", i)}); r.Status != http.StatusCreated {
			t.Fatalf("POST p%d: %d %s", i, r.Status, r.Body)
		}
	}
	var got []string
	cursor := ""
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("paging does not end")
		}
		var l suppressionList
		q := "?limit=2"
		if cursor != "" {
			q += "&cursor=" + url.QueryEscape(cursor)
		}
		r := e.do("GET", "/v1/suppressions"+q, e.sendKey, nil)
		if r.Status != http.StatusOK {
			t.Fatalf("list: %d %s", r.Status, r.Body)
		}
		r.json(t, &l)
		for _, s := range l.Suppressions {
			got = append(got, s.Address)
		}
		if l.NextCursor == "" {
			break
		}
		cursor = l.NextCursor
	}
	if want := "Gone@dest.test p0@dest.test p1@dest.test p2@dest.test p3@dest.test p4@dest.test"; strings.Join(got, " ") != want {
		t.Errorf("listed %v; want %s", got, want)
	}
	// An admin key names another tenant, "" included.
	if r := e.do("POST", "/v1/suppressions?tenant=", e.adminKey, map[string]any{"address": "smtp@dest.test"}); r.Status != http.StatusCreated {
		t.Fatalf("admin POST for tenant \"\": %d %s", r.Status, r.Body)
	}
	if e, _ := e.sp.GetSuppression("", "smtp@dest.test"); e == nil {
		t.Error("the admin's entry is not in tenant \"\"")
	}
	var l suppressionList
	e.do("GET", "/v1/suppressions?tenant=other", e.adminKey, nil).json(t, &l)
	if len(l.Suppressions) != 0 {
		t.Errorf("tenant other lists %v", l.Suppressions)
	}

	// Removal.
	if r := e.do("DELETE", "/v1/suppressions/Gone@dest.test?source=cli", e.sendKey, nil); r.Status != http.StatusOK {
		t.Fatalf("DELETE: %d %s", r.Status, r.Body)
	}
	if r := e.do("DELETE", "/v1/suppressions/Gone@dest.test", e.sendKey, nil); r.Status != http.StatusNotFound {
		t.Errorf("DELETE again: %d %s; want 404", r.Status, r.Body)
	}
	added := outboxEvents(t, e.sp, pipeline.EventSuppressionAdded)
	removed := outboxEvents(t, e.sp, pipeline.EventSuppressionRemoved)
	if len(added) != 8 || len(removed) != 1 {
		t.Fatalf("%d suppression_added, %d suppression_removed events; want 8, 1", len(added), len(removed))
	}
	if rm := removed[0]; rm.Recipient != "Gone@dest.test" || rm.Tenant != "acme" || rm.Source != "cli" || rm.Metadata["reason"] != "again" {
		t.Errorf("suppression_removed %+v", rm)
	}
}

func TestMessageToSuppressedRecipient(t *testing.T) {
	e := newEnv(t, envOptions{noDelivery: true})
	if r := e.do("POST", "/v1/suppressions", e.sendKey, map[string]any{"address": "gone@dest.test", "reason": "hard bounce"}); r.Status != http.StatusCreated {
		t.Fatalf("POST: %d %s", r.Status, r.Body)
	}
	msg := func(to ...string) map[string]any {
		return map[string]any{"from": "a@example.com", "to": to, "subject": "hi", "text": "x"}
	}
	// One suppressed, one queued.
	a := mustAccept(t, e.post("/v1/messages", msg("gone@dest.test", "ok@dest.test")))
	status := map[string]string{}
	for _, r := range a.Recipients {
		status[r.Email] = r.Status
		if r.Status == "suppressed" && (r.Code != 550 || r.Enhanced != "5.7.1" || !strings.Contains(r.Message, "suppression list of tenant acme")) {
			t.Errorf("suppressed recipient %+v", r)
		}
	}
	if status["gone@dest.test"] != "suppressed" || status["ok@dest.test"] != "queued" {
		t.Errorf("statuses %v; want gone suppressed, ok queued", status)
	}
	if n := e.queued(); n != 1 {
		t.Errorf("%d recipients queued; want 1", n)
	}
	if evs := outboxEvents(t, e.sp, pipeline.EventSuppressed); len(evs) != 1 || evs[0].Recipient != "gone@dest.test" || evs[0].MessageID != a.ID || evs[0].Source != "http" || evs[0].Tenant != "acme" {
		t.Errorf("suppressed events %+v; want one for gone@dest.test of %s", evs, a.ID)
	}
	var st statusAnswer
	e.do("GET", "/v1/messages/"+a.ID, e.sendKey, nil).json(t, &st)
	for _, r := range st.Recipients {
		if r.Email == "gone@dest.test" && r.State != "suppressed" {
			t.Errorf("status of gone@dest.test: %s; want suppressed", r.State)
		}
	}

	// Only suppressed recipients: 422, each reported as suppressed.
	r := e.post("/v1/messages", msg("gone@dest.test"))
	if r.Status != http.StatusUnprocessableEntity {
		t.Fatalf("all suppressed: %d %s; want 422", r.Status, r.Body)
	}
	var eb struct {
		Recipients []rcptAnswer `json:"recipients"`
	}
	r.json(t, &eb)
	if len(eb.Recipients) != 1 || eb.Recipients[0].Status != "suppressed" {
		t.Errorf("recipients %+v; want one suppressed", eb.Recipients)
	}
	if n := e.queued(); n != 1 {
		t.Errorf("%d recipients queued; want still 1", n)
	}

	// Another tenant is not affected.
	r = e.do("POST", "/v1/messages", e.otherKey, msg("gone@dest.test"))
	if r.Status != http.StatusAccepted {
		t.Errorf("other tenant: %d %s; want 202", r.Status, r.Body)
	}
	// Removed: it goes through.
	if r := e.do("DELETE", "/v1/suppressions/gone@dest.test", e.sendKey, nil); r.Status != http.StatusOK {
		t.Fatalf("DELETE: %d %s", r.Status, r.Body)
	}
	a = mustAccept(t, e.post("/v1/messages", msg("gone@dest.test")))
	if a.Recipients[0].Status != "queued" {
		t.Errorf("after removal: %+v; want queued", a.Recipients)
	}
}

// The OpenAPI document describes every suppression endpoint and the
// "suppressed" recipient status.
func TestSuppressionsOpenAPI(t *testing.T) {
	var doc struct {
		Paths      map[string]map[string]json.RawMessage `json:"paths"`
		Components struct {
			Schemas map[string]struct {
				Properties map[string]struct {
					Enum []string `json:"enum"`
				} `json:"properties"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(openAPI, &doc); err != nil {
		t.Fatal(err)
	}
	for path, methods := range map[string][]string{"/v1/suppressions": {"get", "post"}, "/v1/suppressions/{address}": {"get", "delete"}} {
		for _, m := range methods {
			if _, ok := doc.Paths[path][m]; !ok {
				t.Errorf("openapi.json lacks %s %s", m, path)
			}
		}
	}
	if !strings.Contains(strings.Join(doc.Components.Schemas["RecipientResult"].Properties["status"].Enum, " "), "suppressed") {
		t.Error("RecipientResult.status does not list suppressed")
	}
}
