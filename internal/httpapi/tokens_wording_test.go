package httpapi

import (
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/token"
)

// A token's sender refusal names the token, not an API key the caller
// does not have.
func TestTokenSenderRefusalNamesToken(t *testing.T) {
	k := newTokenKeys()
	e := k.env(t, k.cur)
	tok := mint(t, k.cur, time.Time{}, token.IssueOptions{Senders: []string{"example.com"}})
	for _, tc := range []struct {
		path string
		body map[string]any
	}{
		{"/v1/messages", map[string]any{"from": "a@evil.test", "to": "b@dest.test", "text": "x"}},
		{"/v1/messages/raw", map[string]any{"from": "a@example.com", "to": []string{"b@dest.test"},
			"message": "From: ceo@evil.test\nSubject: x\n\nbody\n"}},
	} {
		r := e.do("POST", tc.path, tok, tc.body)
		if er := r.errorOf(t); r.Status != 403 || er.Code != codeSenderNotAllowed || !strings.HasPrefix(er.Message, "this token may not send") {
			t.Errorf("%s: %d %+v", tc.path, r.Status, er)
		}
	}
}
