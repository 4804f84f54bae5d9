package httpapi

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/internal/apikey"
	"github.com/sluice-mta/sluice/internal/revoke"
	"github.com/sluice-mta/sluice/pipeline"
)

// Token revocation (docs/http-api.md, docs/auth.md#revocation):
//
//	DELETE /v1/tokens/{id}    revoke one token of the key's tenant by id (jti) → 204
//	POST   /v1/tokens/revoke  {"tenant", "before"} → 200: refuse every token of
//	                          the key's tenant issued before "before" (default now)
//
// Both need an API key with the tokens scope (a token cannot revoke) and
// work on the key's tenant only: a revocation by id names (tenant, jti),
// so a key of another tenant cannot revoke someone else's token even if
// it knows its id. ?source=cli marks the event as made by `sluice token
// revoke` (default api).

const revokePath = tokensPath + "/revoke"

// UseRevocations installs the node's revocation list (nil: the
// revocation endpoints answer 404, as without sluice.tokens). Call it
// before Serve.
func (s *Server) UseRevocations(l *revoke.List) { s.revocations.Store(l) }

// revokeRequest is the body of POST /v1/tokens/revoke.
type revokeRequest struct {
	Tenant string `json:"tenant,omitempty"` // default: the key's; another is 403
	Before string `json:"before,omitempty"` // RFC 3339; default now
}

// revokeAnswer is the 200 answer of POST /v1/tokens/revoke.
type revokeAnswer struct {
	Tenant string    `json:"tenant"`
	Before time.Time `json:"before"`
}

// tokenRevocation routes /v1/tokens/revoke and /v1/tokens/{id}.
func (s *Server) tokenRevocation(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	if p == revokePath {
		if s.method(w, r, http.MethodPost) {
			s.revokeTenant(w, r)
		}
		return
	}
	id := strings.TrimPrefix(p, tokensPath+"/")
	if r.Method != http.MethodDelete {
		s.notAllowed(w, "DELETE")
		return
	}
	s.revokeID(w, r, id)
}

// revocationCaller authenticates a revocation: an API key with the
// tokens scope and a tenant, the list installed, ?source valid.
func (s *Server) revocationCaller(r *http.Request) (*caller, *revoke.List, string, *apiError) {
	l := s.revocations.Load()
	if l == nil {
		return nil, nil, "", errf(http.StatusNotFound, codeNotFound, "", "this server has no token revocation: configure sluice.tokens (and restart)")
	}
	k, e := s.authenticate(r, apikey.ScopeTokens)
	if e != nil {
		return nil, nil, "", e
	}
	if k.claims != nil {
		return nil, nil, "", errf(http.StatusForbidden, codeForbidden, "", "a token cannot revoke tokens; use an API key with the %q scope", apikey.ScopeTokens)
	}
	if k.Tenant == "" {
		return nil, nil, "", errf(http.StatusForbidden, codeForbidden, "", "this API key has no tenant, and tokens always have one")
	}
	q := r.URL.Query()
	for name := range q {
		if name != "source" {
			return nil, nil, "", errf(http.StatusBadRequest, codeUnknownField, name, "unknown parameter %q", name)
		}
	}
	source := q.Get("source")
	switch source {
	case "":
		source = revoke.SourceAPI
	case revoke.SourceAPI, revoke.SourceCLI:
	default:
		return nil, nil, "", badField("source", "source must be %q or %q", revoke.SourceAPI, revoke.SourceCLI)
	}
	return k, l, source, nil
}

// validTokenID is a jti as Issue makes them: unpadded base64url, here
// 1 to 128 characters (other issuers' ids are accepted if they fit).
func validTokenID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func (s *Server) revokeID(w http.ResponseWriter, r *http.Request, id string) {
	k, l, source, e := s.revocationCaller(r)
	if e != nil {
		s.fail(w, e)
		return
	}
	if !validTokenID(id) {
		s.fail(w, badField("id", "a token id (the jti, the \"id\" of POST /v1/tokens) is 1 to 128 characters of unpadded base64url"))
		return
	}
	if _, err := l.RevokeID(r.Context(), k.Tenant, id, source); errors.Is(err, revoke.ErrTooMany) {
		s.fail(w, errf(http.StatusTooManyRequests, codeTempfail, "id",
			"this node already holds %d revoked token ids: revoke the tenant's tokens by time instead (POST /v1/tokens/revoke)", revoke.MaxIDs))
		return
	} else if err != nil {
		s.log.Error("token revocation failed", "tenant", k.Tenant, "jti", id, "err", err)
		s.fail(w, revocationError(err))
		return
	}
	s.log.Info("token revoked by API", "key", k.Key.ID, "tenant", k.Tenant, "jti", id, "source", source)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) revokeTenant(w http.ResponseWriter, r *http.Request) {
	k, l, source, e := s.revocationCaller(r)
	if e != nil {
		s.fail(w, e)
		return
	}
	var req revokeRequest
	if e := s.readJSON(w, r, &req); e != nil {
		s.fail(w, e)
		return
	}
	if req.Tenant != "" && req.Tenant != k.Tenant {
		s.fail(w, errf(http.StatusForbidden, codeForbidden, "tenant", "this API key may revoke only the tokens of its tenant %q", k.Tenant))
		return
	}
	var before time.Time
	if req.Before != "" {
		t, err := time.Parse(time.RFC3339, req.Before)
		if err != nil {
			s.fail(w, badField("before", "want an RFC 3339 time like \"2026-11-30T10:00:00Z\""))
			return
		}
		before = t
	}
	rv, err := l.RevokeTenant(r.Context(), k.Tenant, before, source)
	if errors.Is(err, revoke.ErrFuture) {
		s.fail(w, badField("before", "must not be in the future (tokens issued later are not revoked by this call)"))
		return
	}
	if err != nil {
		s.log.Error("tenant token revocation failed", "tenant", k.Tenant, "err", err)
		s.fail(w, revocationError(err))
		return
	}
	s.log.Info("tenant tokens revoked by API", "key", k.Key.ID, "tenant", k.Tenant, "before", rv.Before, "source", source)
	s.writeJSON(w, http.StatusOK, revokeAnswer{Tenant: rv.Tenant, Before: rv.Before})
}

// revocationError: a revocation the spool could not store is 503 (disk
// full: 507), retryable; nothing was revoked.
func revocationError(err error) *apiError {
	if errors.Is(err, pipeline.ErrSpoolFull) {
		return errf(http.StatusInsufficientStorage, codeUnavailable, "", "the spool's disk is full: the token was not revoked; retry")
	}
	return errf(http.StatusServiceUnavailable, codeUnavailable, "", "the revocation could not be stored: nothing was revoked; retry")
}

// readJSON reads the request body (readBody's limits) and decodes it
// into v (decodeJSON's errors).
func (s *Server) readJSON(w http.ResponseWriter, r *http.Request, v any) *apiError {
	body, e := s.readBody(w, r)
	if e != nil {
		return e
	}
	defer putBuf(body)
	return decodeJSON(body.Bytes(), v)
}
