package httpapi

import (
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/apikey"
	"github.com/sluice-mta/sluice/internal/revoke"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/internal/token"
	"github.com/sluice-mta/sluice/pipeline"
)

// revocationEnv is an API with tokens and the node's revocation list
// (kept in the env's spool).
func revocationEnv(t *testing.T) (*env, *token.SigningKey) {
	t.Helper()
	k := token.GenerateKey()
	e := newEnv(t, envOptions{})
	l, err := revoke.New(revoke.Options{Spool: e.sp})
	if err != nil {
		t.Fatal(err)
	}
	v, err := token.NewVerifier([]*token.PublicKey{k.Public()}, 0, l)
	if err != nil {
		t.Fatal(err)
	}
	e.srv.UseTokens(token.NewIssuer(k, 0), v)
	e.srv.UseRevocations(l)
	return e, k
}

func TestRevokeTokens(t *testing.T) {
	e, _ := revocationEnv(t)
	minter := e.createKey(apikey.CreateOptions{Tenant: "acme", Scopes: []string{"send", "tokens"}})
	otherMinter := e.createKey(apikey.CreateOptions{Tenant: "other", Scopes: []string{"send", "tokens"}})
	msg := map[string]any{"from": "a@example.com", "to": "b@dest.test", "text": "x"}
	mintOne := func(key string) tokenAnswer {
		t.Helper()
		r := e.do("POST", "/v1/tokens", key, map[string]any{})
		var a tokenAnswer
		r.json(t, &a)
		if r.Status != 201 {
			t.Fatalf("mint: %d %s", r.Status, r.Body)
		}
		return a
	}
	a, b := mintOne(minter), mintOne(minter)
	mustAccept(t, e.do("POST", "/v1/messages", a.Token, msg)) // cached from here on

	// Another tenant's key cannot revoke acme's token: its revocation
	// names (other, id), which no acme token matches.
	if r := e.do("DELETE", "/v1/tokens/"+a.ID, otherMinter, nil); r.Status != 204 {
		t.Fatalf("DELETE by another tenant: %d %s", r.Status, r.Body)
	}
	mustAccept(t, e.do("POST", "/v1/messages", a.Token, msg))

	if r := e.do("DELETE", "/v1/tokens/"+a.ID+"?source=cli", minter, nil); r.Status != 204 || len(r.Body) != 0 {
		t.Fatalf("DELETE: %d %s", r.Status, r.Body)
	}
	if r := e.do("POST", "/v1/messages", a.Token, msg); r.Status != 401 || r.errorOf(t).Code != codeTokenRevoked {
		t.Fatalf("revoked token: %d %s", r.Status, r.Body)
	}
	mustAccept(t, e.do("POST", "/v1/messages", b.Token, msg))

	// Whole tenant: b (issued before now) is refused; a token minted
	// after the revocation's second works.
	r := e.do("POST", "/v1/tokens/revoke", minter, map[string]any{})
	var ra revokeAnswer
	r.json(t, &ra)
	if r.Status != 200 || ra.Tenant != "acme" || ra.Before.Before(b.IssuedAt) {
		t.Fatalf("revoke tenant: %d %s", r.Status, r.Body)
	}
	if r := e.do("POST", "/v1/messages", b.Token, msg); r.Status != 401 || r.errorOf(t).Code != codeTokenRevoked {
		t.Fatalf("token of a revoked tenant: %d %s", r.Status, r.Body)
	}
	var c tokenAnswer
	testutil.WaitFor(t, "a token minted after the tenant revocation works", func() bool {
		c = mintOne(minter)
		return c.IssuedAt.Compare(ra.Before) >= 0
	})
	mustAccept(t, e.do("POST", "/v1/messages", c.Token, msg))

	// Refusals, each naming the field where there is one.
	for _, tc := range []struct {
		method, path, key string
		body              any
		status            int
		code, field       string
	}{
		{"DELETE", "/v1/tokens/" + c.ID, e.sendKey, nil, 403, codeForbidden, ""},
		{"DELETE", "/v1/tokens/" + c.ID, c.Token, nil, 403, codeForbidden, ""},
		{"DELETE", "/v1/tokens/" + c.ID, "", nil, 401, codeUnauthorized, ""},
		{"DELETE", "/v1/tokens/bad%20id", minter, nil, 400, codeInvalidField, "id"},
		{"DELETE", "/v1/tokens/" + strings.Repeat("a", 129), minter, nil, 400, codeInvalidField, "id"},
		{"DELETE", "/v1/tokens/" + c.ID + "?source=robot", minter, nil, 400, codeInvalidField, "source"},
		{"DELETE", "/v1/tokens/" + c.ID + "?x=1", minter, nil, 400, codeUnknownField, "x"},
		{"GET", "/v1/tokens/" + c.ID, minter, nil, 405, codeMethodNotAllowed, ""},
		{"GET", "/v1/tokens/revoke", minter, nil, 405, codeMethodNotAllowed, ""},
		{"POST", "/v1/tokens/revoke", minter, map[string]any{"tenant": "other"}, 403, codeForbidden, "tenant"},
		{"POST", "/v1/tokens/revoke", minter, map[string]any{"before": "yesterday"}, 400, codeInvalidField, "before"},
		{"POST", "/v1/tokens/revoke", minter, map[string]any{"before": time.Now().Add(time.Hour).Format(time.RFC3339)}, 400, codeInvalidField, "before"},
		{"POST", "/v1/tokens/revoke", minter, map[string]any{"when": "now"}, 400, codeUnknownField, "when"},
	} {
		r := e.do(tc.method, tc.path, tc.key, tc.body)
		if r.Status != tc.status {
			t.Errorf("%s %s: %d %s", tc.method, tc.path, r.Status, r.Body)
			continue
		}
		if er := r.errorOf(t); er.Code != tc.code || er.Field != tc.field {
			t.Errorf("%s %s: %+v", tc.method, tc.path, er)
		}
	}
	mustAccept(t, e.do("POST", "/v1/messages", c.Token, msg))

	// One token_revoked event per revocation, valid against the schema.
	evs, err := e.sp.ReadOutbox(0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ev := range evs {
		if ev.Type == pipeline.EventTokenRevoked {
			testutil.ValidateEvent(t, ev.JSON)
			got = append(got, string(ev.JSON))
		}
	}
	if len(got) != 3 || !strings.Contains(got[0], `"tenant":"other"`) || !strings.Contains(got[1], `"source":"cli"`) ||
		!strings.Contains(got[1], `"token_id":"`+a.ID+`"`) || !strings.Contains(got[2], `"before":"`) {
		t.Fatalf("token_revoked events:\n%s", strings.Join(got, "\n"))
	}
}

func TestRevokeWithoutTokens(t *testing.T) {
	e := newEnv(t, envOptions{noDelivery: true})
	minter := e.createKey(apikey.CreateOptions{Tenant: "acme", Scopes: []string{"tokens"}})
	if r := e.do("DELETE", "/v1/tokens/abc", minter, nil); r.Status != 404 || r.errorOf(t).Code != codeNotFound {
		t.Fatalf("DELETE without sluice.tokens: %d %s", r.Status, r.Body)
	}
	if r := e.do("POST", "/v1/tokens/revoke", minter, map[string]any{}); r.Status != 404 {
		t.Fatalf("POST revoke without sluice.tokens: %d %s", r.Status, r.Body)
	}
}
