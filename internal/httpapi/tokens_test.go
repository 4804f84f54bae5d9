package httpapi

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/apikey"
	"github.com/sluice-mta/sluice/internal/token"
)

// tokenKeys: cur signs, old is still listed (rotation), stray is not.
type tokenKeys struct{ cur, old, stray *token.SigningKey }

func newTokenKeys() tokenKeys {
	return tokenKeys{token.GenerateKey(), token.GenerateKey(), token.GenerateKey()}
}

func (k tokenKeys) env(t *testing.T, pubs ...*token.SigningKey) *env {
	var pk []*token.PublicKey
	for _, p := range pubs {
		pk = append(pk, p.Public())
	}
	v, err := token.NewVerifier(pk, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	return newEnv(t, envOptions{tokIss: token.NewIssuer(k.cur, 0), tokVer: v})
}

func mint(t *testing.T, k *token.SigningKey, at time.Time, o token.IssueOptions) string {
	t.Helper()
	iss := token.NewIssuer(k, 0)
	if !at.IsZero() {
		iss = iss.WithClock(func() time.Time { return at })
	}
	if o.Tenant == "" {
		o.Tenant = "acme"
	}
	tok, _, err := iss.Issue(o)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestTokenRefusals(t *testing.T) {
	k := newTokenKeys()
	e := k.env(t, k.cur, k.old)
	now := time.Now()
	good := mint(t, k.cur, time.Time{}, token.IssueOptions{Senders: []string{"example.com"}, MaxRcpts: 2})
	stray := mint(t, k.stray, time.Time{}, token.IssueOptions{})
	footer := func(kid string) string { return base64.RawURLEncoding.EncodeToString([]byte(`{"kid":"` + kid + `"}`)) }
	parts := strings.Split(good, ".")
	pb, _ := base64.RawURLEncoding.DecodeString(parts[2])
	pb[20] ^= 0x40 // inside the claims
	tampered := strings.Join([]string{parts[0], parts[1], base64.RawURLEncoding.EncodeToString(pb), parts[3]}, ".")

	msg := map[string]any{"from": "a@example.com", "to": "b@dest.test", "text": "x"}
	cases := []struct {
		name, tok, path string
		body            any
		status          int
		code, field     string
	}{
		{"good", good, "/v1/messages", msg, 202, "", ""},
		{"old key during rotation", mint(t, k.old, time.Time{}, token.IssueOptions{}), "/v1/messages", msg, 202, "", ""},
		{"expired", mint(t, k.cur, now.Add(-20*time.Minute), token.IssueOptions{TTL: 10 * time.Minute}), "/v1/messages", msg, 401, codeTokenExpired, ""},
		{"not yet valid", mint(t, k.cur, now.Add(10*time.Minute), token.IssueOptions{}), "/v1/messages", msg, 401, codeTokenNotYetValid, ""},
		{"unknown kid", stray, "/v1/messages", msg, 401, codeTokenUnknownKey, ""},
		{"wrong key", strings.Replace(stray, footer(k.stray.ID()), footer(k.cur.ID()), 1), "/v1/messages", msg, 401, codeTokenInvalid, ""},
		{"tampered payload", tampered, "/v1/messages", msg, 401, codeTokenInvalid, ""},
		{"local purpose", "v4.local." + parts[2], "/v1/messages", msg, 401, codeTokenInvalid, ""},
		{"wrong scope", good, "/v1/admin/keys", nil, 403, codeForbidden, ""},
		{"admin-only token sending", mint(t, k.cur, time.Time{}, token.IssueOptions{Scopes: []string{"admin"}}), "/v1/messages", msg, 403, codeForbidden, ""},
		{"sender outside domains", good, "/v1/messages", map[string]any{"from": "a@evil.test", "to": "b@dest.test", "text": "x"}, 403, codeSenderNotAllowed, "from"},
		{"raw From outside domains", good, "/v1/messages/raw", map[string]any{"from": "a@example.com", "to": []string{"b@dest.test"},
			"message": "From: ceo@evil.test\nSubject: x\n\nbody\n"}, 403, codeSenderNotAllowed, "message"},
		{"recipient cap", good, "/v1/messages", map[string]any{"from": "a@example.com", "to": []string{"b@dest.test", "c@dest.test"}, "cc": "d@dest.test", "text": "x"}, 403, codeTooManyRcpts, "to"},
		{"recipient cap in batch", good, "/v1/messages/batch", map[string]any{"messages": []any{
			map[string]any{"from": "a@example.com", "to": []string{"b@dest.test", "c@dest.test", "d@dest.test"}, "text": "x"},
			map[string]any{"from": "a@example.com", "to": []string{"b@dest.test"}, "text": "x"}}}, 202, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			method := "POST"
			if tc.body == nil {
				method = "GET"
			}
			r := e.do(method, tc.path, tc.tok, tc.body)
			if r.Status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.Status, tc.status, r.Body)
			}
			if tc.code != "" {
				if er := r.errorOf(t); er.Code != tc.code || er.Field != tc.field {
					t.Fatalf("error %+v, want code %s field %q", er, tc.code, tc.field)
				}
			}
			if tc.path == "/v1/messages/batch" && !strings.Contains(string(r.Body), `"`+codeTooManyRcpts+`"`) || tc.path == "/v1/messages/batch" && !strings.Contains(string(r.Body), `"messages[0].to"`) {
				t.Fatalf("batch answer lacks the cap refusal: %s", r.Body)
			}
		})
	}
	// The identity stages see is the token's.
	var found bool
	for _, s := range e.stage.hooks() {
		if s.Hook == "on_mail" && s.Identity != nil && s.Identity.Method == "token" && s.Identity.Tenant == "acme" {
			found = true
		}
	}
	if !found {
		t.Fatal("no stage saw a token identity")
	}
}

// Rotation's last step: once the old public key is removed, its tokens
// are refused.
func TestTokenKeyRetired(t *testing.T) {
	k := newTokenKeys()
	e := k.env(t, k.cur)
	msg := map[string]any{"from": "a@example.com", "to": "b@dest.test", "text": "x"}
	r := e.do("POST", "/v1/messages", mint(t, k.old, time.Time{}, token.IssueOptions{}), msg)
	if r.Status != 401 || r.errorOf(t).Code != codeTokenUnknownKey {
		t.Fatalf("retired key: %d %s", r.Status, r.Body)
	}
	mustAccept(t, e.do("POST", "/v1/messages", mint(t, k.cur, time.Time{}, token.IssueOptions{}), msg))
}

func TestMintToken(t *testing.T) {
	k := newTokenKeys()
	e := k.env(t, k.cur, k.old)
	minter := e.createKey(apikey.CreateOptions{Tenant: "acme", Scopes: []string{"send", "tokens"}, Senders: []string{"example.com", "example.org"}})
	msg := map[string]any{"from": "a@example.com", "to": "b@dest.test", "text": "x"}

	if r := e.do("POST", "/v1/tokens", e.sendKey, map[string]any{}); r.Status != 403 || r.errorOf(t).Code != codeForbidden {
		t.Fatalf("send key minting: %d %s", r.Status, r.Body)
	}
	r := e.do("POST", "/v1/tokens", minter, map[string]any{"lifetime": "5m", "senders": []string{"Example.COM"}, "max_rcpts": 1})
	if r.Status != 201 {
		t.Fatalf("mint: %d %s", r.Status, r.Body)
	}
	var a tokenAnswer
	r.json(t, &a)
	if a.Tenant != "acme" || len(a.Scopes) != 1 || a.Scopes[0] != "send" || len(a.Senders) != 1 || a.Senders[0] != "example.com" ||
		a.MaxRcpts != 1 || a.ExpiresAt.Sub(a.IssuedAt) != 5*time.Minute || a.KeyID != k.cur.ID() || !strings.HasPrefix(a.Token, "v4.public.") {
		t.Fatalf("minted %+v", a)
	}
	mustAccept(t, e.do("POST", "/v1/messages", a.Token, msg))
	if r := e.do("POST", "/v1/messages", a.Token, map[string]any{"from": "a@example.org", "to": "b@dest.test", "text": "x"}); r.Status != 403 {
		t.Fatalf("narrowed senders not enforced: %d %s", r.Status, r.Body)
	}
	if r := e.do("POST", "/v1/tokens", a.Token, map[string]any{}); r.Status != 403 {
		t.Fatalf("token minting a token: %d %s", r.Status, r.Body)
	}
	// Default: the key's senders, 15 minutes.
	r = e.do("POST", "/v1/tokens", minter, map[string]any{})
	r.json(t, &a)
	if r.Status != 201 || len(a.Senders) != 2 || a.ExpiresAt.Sub(a.IssuedAt) != 15*time.Minute {
		t.Fatalf("default mint: %d %s", r.Status, r.Body)
	}
	// Never more than the key has.
	for _, tc := range []struct {
		body        map[string]any
		status      int
		code, field string
	}{
		{map[string]any{"scopes": []string{"admin"}}, 403, codeForbidden, "scopes"},
		{map[string]any{"scopes": []string{"tokens"}}, 400, codeInvalidField, "scopes"},
		{map[string]any{"senders": []string{"evil.test"}}, 403, codeSenderNotAllowed, "senders"},
		{map[string]any{"lifetime": "16m"}, 400, codeInvalidField, "lifetime"},
		{map[string]any{"lifetime": "soon"}, 400, codeInvalidField, "lifetime"},
		{map[string]any{"max_rcpts": -1}, 400, codeInvalidField, "max_rcpts"},
		{map[string]any{"tenant": "other"}, 400, codeUnknownField, "tenant"},
	} {
		r := e.do("POST", "/v1/tokens", minter, tc.body)
		if r.Status != tc.status {
			t.Errorf("%v: %d %s", tc.body, r.Status, r.Body)
			continue
		}
		if er := r.errorOf(t); er.Code != tc.code || er.Field != tc.field {
			t.Errorf("%v: %+v", tc.body, er)
		}
	}
	// The public keys, for edge proxies.
	r = e.do("GET", KeysPath, "", nil)
	var ks keySet
	r.json(t, &ks)
	if r.Status != 200 || len(ks.Keys) != 2 || ks.Keys[k.cur.ID()] != k.cur.Public().PASERK() || ks.Keys[k.old.ID()] == "" || ks.MaxLifetimeSeconds != 900 {
		t.Fatalf("keys: %d %s", r.Status, r.Body)
	}
}

func TestTokensOpenAPI(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(openAPI, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Paths[tokensPath]["post"] == nil || doc.Paths[KeysPath]["get"] == nil ||
		doc.Paths[revokePath]["post"] == nil || doc.Paths[tokensPath+"/{id}"]["delete"] == nil {
		t.Fatal("openapi.json lacks the token endpoints")
	}
}

func TestTokensDisabled(t *testing.T) {
	e := newEnv(t, envOptions{noDelivery: true})
	tok := mint(t, token.GenerateKey(), time.Time{}, token.IssueOptions{})
	if r := e.do("POST", "/v1/messages", tok, map[string]any{"from": "a@example.com", "to": "b@dest.test", "text": "x"}); r.Status != 401 || r.errorOf(t).Code != codeTokenInvalid {
		t.Fatalf("token without sluice.tokens: %d %s", r.Status, r.Body)
	}
	if r := e.do("POST", "/v1/tokens", e.adminKey, map[string]any{}); r.Status != 404 {
		t.Fatalf("mint without a signing key: %d %s", r.Status, r.Body)
	}
	if r := e.do("GET", KeysPath, "", nil); r.Status != 404 {
		t.Fatalf("keys without sluice.tokens: %d", r.Status)
	}
}
