package httpapi

import (
	"net/http"
	"slices"
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

// TestRequireTLSField: require_tls on /v1/messages, /raw and batch items
// reaches the transaction as Params.RequireTLS (on_mail already sees it);
// a non-boolean is a 400 naming the field.
func TestRequireTLSField(t *testing.T) {
	e := newEnv(t, envOptions{noDelivery: true}) // no bounces through on_message
	var got []bool
	e.stage.message = func(m *pipeline.Message) pipeline.Verdict {
		got = append(got, m.Params.RequireTLS)
		return pipeline.Verdict{}
	}
	for _, c := range []struct{ path, body string }{
		{"/v1/messages", `{"to":"user@dest.test","from":"system@example.com","subject":"s","text":"x","require_tls":true}`},
		{"/v1/messages", `{"to":"user@dest.test","from":"system@example.com","subject":"s","text":"x"}`},
		{"/v1/messages", `{"to":"user@dest.test","from":"system@example.com","subject":"s","text":"x","require_tls":null}`},
		{"/v1/messages/raw", `{"to":"user@dest.test","from":"system@example.com","message":"From: system@example.com\r\nSubject: s\r\n\r\nx\r\n","require_tls":true}`},
		{"/v1/messages/batch", `{"messages":[{"to":"a@dest.test","from":"s@example.com","text":"x","require_tls":true}]}`},
	} {
		if r := e.post(c.path, c.body); r.Status != http.StatusAccepted {
			t.Fatalf("%s %s: %d %s", c.path, c.body, r.Status, r.Body)
		}
	}
	if want := []bool{true, false, false, true, true}; !slices.Equal(got, want) {
		t.Fatalf("RequireTLS per message %v, want %v", got, want)
	}
	r := e.post("/v1/messages", `{"to":"a@dest.test","from":"s@example.com","text":"x","require_tls":"yes"}`)
	if er := r.errorOf(t); r.Status != http.StatusBadRequest || er.Field != "require_tls" {
		t.Fatalf("a string for require_tls: %d %s", r.Status, r.Body)
	}
}
