package httpapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/internal/apikey"
	"github.com/sluice-mta/sluice/internal/token"
	"github.com/sluice-mta/sluice/pipeline"
)

// Token error codes (401), part of the API like the others in errors.go.
const (
	codeTokenExpired     = "token_expired"       // exp has passed
	codeTokenNotYetValid = "token_not_yet_valid" // nbf is in the future
	codeTokenUnknownKey  = "token_unknown_key"   // kid not among the public keys
	codeTokenInvalid     = "token_invalid"       // malformed, tampered, bad signature, wrong version or purpose
	codeTokenRevoked     = "token_revoked"       // revoked by id or tenant (token.Revoker)
	codeTooManyRcpts     = "too_many_recipients" // 403: more recipients than the token's max_rcpts
)

const tokensPath = "/v1/tokens"

// KeysPath serves the token verification keys (kid → PASERK k4.public),
// for edge proxies that verify tokens themselves.
const KeysPath = "/.well-known/sluice-keys.json"

// caller is who a request authenticated as: an API key, or a token whose
// claims are shown as a key (ID "tok_"+jti, the token's tenant, scopes and
// senders).
type caller struct {
	*apikey.Key
	claims *token.Claims // nil for an API key
	raw    string        // the token, for on_auth stages
}

// Identity is the pipeline identity of the caller; a token's has Method
// "token".
func (c *caller) Identity() *pipeline.Identity {
	id := c.Key.Identity()
	if c.claims != nil {
		id.Method = "token"
	}
	return id
}

// credentials are what on_auth stages see: APIKEY with the key id, or
// BEARER with the token (and no user name).
func (c *caller) credentials() *pipeline.Credentials {
	if c.claims != nil {
		return &pipeline.Credentials{Mechanism: "BEARER", Token: c.raw}
	}
	return &pipeline.Credentials{Mechanism: "APIKEY", Username: c.Key.ID}
}

func (c *caller) kind() string {
	if c.claims != nil {
		return "token"
	}
	return "API key"
}

// checkRcpts enforces a token's max_rcpts on one message.
func (c *caller) checkRcpts(it *item, field string) *apiError {
	if c == nil || c.claims == nil || c.claims.MaxRcpts == 0 || len(it.rcpts) <= c.claims.MaxRcpts {
		return nil
	}
	return errf(http.StatusForbidden, codeTooManyRcpts, field,
		"this token allows at most %d recipients per message (max_rcpts), the message has %d", c.claims.MaxRcpts, len(it.rcpts))
}

// isToken tells a PASETO (v4.public.…, or another version or purpose, to
// be refused as such) from an API key (sk_…).
func isToken(cred string) bool {
	return len(cred) > 3 && cred[0] == 'v' && cred[1] >= '1' && cred[1] <= '9' && cred[2] == '.'
}

// tokenSet is what UseTokens installed.
type tokenSet struct {
	iss *token.Issuer
	ver *token.Verifier
}

// UseTokens enables bearer tokens: v verifies them (nil: tokens are
// refused, 401 token_invalid), iss mints them at POST /v1/tokens (nil:
// 404). It may be called at any time (a reload swaps the keys); requests
// already past authentication keep the keys they started with.
func (s *Server) UseTokens(iss *token.Issuer, v *token.Verifier) {
	s.toks.Store(&tokenSet{iss, v})
}

// tokens returns the installed issuer and verifier (either may be nil).
func (s *Server) tokens() (*token.Issuer, *token.Verifier) {
	if t := s.toks.Load(); t != nil {
		return t.iss, t.ver
	}
	return nil, nil
}

// verifyToken checks a token and makes its caller.
func (s *Server) verifyToken(r *http.Request, tok string) (*caller, *apiError) {
	_, ver := s.tokens()
	if ver == nil {
		s.authFailed(r, "BEARER", "tokens are not enabled")
		return nil, errf(http.StatusUnauthorized, codeTokenInvalid, "", "this server does not accept tokens (no sluice.tokens); use an API key")
	}
	c, err := ver.Verify(tok)
	if err != nil {
		s.authFailed(r, "BEARER", err.Error())
		code, msg := codeTokenInvalid, "the token is malformed, tampered with, or not a v4.public PASETO: mint a new one"
		switch {
		case errors.Is(err, token.ErrExpired):
			code, msg = codeTokenExpired, "the token has expired: mint a new one"
		case errors.Is(err, token.ErrNotYetValid):
			code, msg = codeTokenNotYetValid, "the token is not valid yet (nbf): check the clocks of the issuer and of this server"
		case errors.Is(err, token.ErrUnknownKey):
			code, msg = codeTokenUnknownKey, "the token was signed by a key this server does not accept (kid): it was retired, or is not yet listed in sluice.tokens public_keys"
		case errors.Is(err, token.ErrRevoked):
			code, msg = codeTokenRevoked, "the token was revoked"
		}
		return nil, errf(http.StatusUnauthorized, code, "", "%s", msg)
	}
	k := &apikey.Key{ID: "tok_" + c.ID, Tenant: c.Tenant, Scopes: c.Scopes, Senders: c.Senders,
		Created: c.IssuedAt}
	return &caller{Key: k, claims: c, raw: tok}, nil
}

// tokenRequest is the body of POST /v1/tokens.
type tokenRequest struct {
	Lifetime string   `json:"lifetime,omitempty"` // Go duration, e.g. "10m"; default min(15m, max_lifetime)
	Scopes   []string `json:"scopes,omitempty"`   // default ["send"]
	Senders  []string `json:"senders,omitempty"`  // default: the key's
	MaxRcpts int      `json:"max_rcpts,omitempty"`
}

// tokenAnswer is the 201 answer of POST /v1/tokens.
type tokenAnswer struct {
	Token     string    `json:"token"`
	ID        string    `json:"id"`
	KeyID     string    `json:"kid"`
	Tenant    string    `json:"tenant"`
	Scopes    []string  `json:"scopes"`
	Senders   []string  `json:"senders,omitempty"`
	MaxRcpts  int       `json:"max_rcpts,omitempty"`
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// postToken mints a token for the API key's tenant, never with more than
// the key has: scopes a subset of the key's (send, admin), senders a
// subset of the key's (when the key is restricted).
func (s *Server) postToken(w http.ResponseWriter, r *http.Request) {
	iss, _ := s.tokens()
	if iss == nil {
		s.fail(w, errf(http.StatusNotFound, codeNotFound, "", "this server issues no tokens: configure sluice.tokens with a signing_key"))
		return
	}
	k, e := s.authenticate(r, apikey.ScopeTokens)
	if e != nil {
		s.fail(w, e)
		return
	}
	if k.claims != nil {
		s.fail(w, errf(http.StatusForbidden, codeForbidden, "", "a token cannot mint tokens; use an API key with the %q scope", apikey.ScopeTokens))
		return
	}
	var req tokenRequest
	if e := s.readJSON(w, r, &req); e != nil {
		s.fail(w, e)
		return
	}
	o := token.IssueOptions{Tenant: k.Tenant, Scopes: req.Scopes, MaxRcpts: req.MaxRcpts}
	if req.Lifetime != "" {
		d, err := time.ParseDuration(req.Lifetime)
		if err != nil || d <= 0 {
			s.fail(w, badField("lifetime", "want a positive duration like \"10m\" or \"90s\""))
			return
		}
		if d > iss.MaxLifetime() {
			s.fail(w, badField("lifetime", "at most %s (sluice.tokens max_lifetime)", iss.MaxLifetime()))
			return
		}
		o.TTL = d
	}
	if req.MaxRcpts < 0 {
		s.fail(w, badField("max_rcpts", "must be 0 (no limit) or positive"))
		return
	}
	if len(o.Scopes) == 0 {
		o.Scopes = []string{token.ScopeSend}
	}
	for _, sc := range o.Scopes {
		if sc != token.ScopeSend && sc != token.ScopeAdmin {
			s.fail(w, badField("scopes", "unknown scope %q: a token may carry %q and %q", sc, token.ScopeSend, token.ScopeAdmin))
			return
		}
		if !k.HasScope(sc) {
			s.fail(w, errf(http.StatusForbidden, codeForbidden, "scopes", "this API key lacks the %q scope, so its tokens cannot have it", sc))
			return
		}
	}
	senders, err := token.NormalizeDomains(req.Senders)
	if err != nil {
		s.fail(w, badField("senders", "%s", strings.TrimPrefix(err.Error(), "token: ")))
		return
	}
	if len(k.Senders) > 0 {
		if len(senders) == 0 {
			senders = k.Senders
		}
		for _, d := range senders {
			if !slices.ContainsFunc(k.Senders, func(x string) bool { return strings.EqualFold(x, d) }) {
				s.fail(w, errf(http.StatusForbidden, codeSenderNotAllowed, "senders", "this API key may not send from %q, so its tokens cannot", d))
				return
			}
		}
	}
	o.Senders = senders
	tok, c, err := iss.Issue(o)
	if err != nil {
		s.fail(w, badField("", "%s", strings.TrimPrefix(err.Error(), "token: ")))
		return
	}
	s.log.Info("token issued", "key", k.Key.ID, "tenant", c.Tenant, "jti", c.ID, "kid", c.KeyID,
		"scopes", c.Scopes, "expires", c.Expires)
	b, _ := json.Marshal(tokenAnswer{Token: tok, ID: c.ID, KeyID: c.KeyID, Tenant: c.Tenant, Scopes: c.Scopes,
		Senders: c.Senders, MaxRcpts: c.MaxRcpts, IssuedAt: c.IssuedAt, ExpiresAt: c.Expires})
	w.Header().Set("Cache-Control", "no-store")
	s.writeAnswer(w, answer{status: http.StatusCreated, body: b})
}

// keySet is the JSON at KeysPath.
type keySet struct {
	Version            string            `json:"version"` // "v4"
	Purpose            string            `json:"purpose"` // "public"
	Keys               map[string]string `json:"keys"`    // kid (k4.pid) → k4.public PASERK
	MaxLifetimeSeconds int64             `json:"max_lifetime_seconds"`
}

// publicKeys serves the verification keys; no authentication (they are
// public). 404 without sluice.tokens.
func (s *Server) publicKeys(w http.ResponseWriter, r *http.Request) {
	_, ver := s.tokens()
	if ver == nil {
		s.fail(w, errNotFound)
		return
	}
	ks := keySet{Version: "v4", Purpose: "public", Keys: map[string]string{},
		MaxLifetimeSeconds: int64(ver.MaxLifetime() / time.Second)}
	for _, k := range ver.Keys() {
		ks.Keys[k.ID()] = k.PASERK()
	}
	b, _ := json.Marshal(ks)
	w.Header().Set("Cache-Control", "public, max-age=60")
	s.writeAnswer(w, answer{status: http.StatusOK, body: b})
}
