package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sluice-mta/sluice/internal/apikey"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// The suppression list API (docs/http-api.md):
//
//	GET    /v1/suppressions?limit=&cursor=    the tenant's list, by address, paged
//	POST   /v1/suppressions                   {"address", "reason", "source"} → 201 (200 if it replaced one)
//	GET    /v1/suppressions/{address}         one entry, or 404
//	DELETE /v1/suppressions/{address}         200 with the removed entry, or 404
//
// Every request is scoped to one tenant: the tenant of the key's identity
// after on_connect and on_auth (pipeline.Conn.Tenant(), the tenant the
// relay enforces the list for). A key with the admin scope may name
// another with ?tenant= (an empty value is the "" tenant of SMTP clients
// without one). Keys need the send or the admin scope.

const suppressionsPath = "/v1/suppressions"

// maxReasonLen bounds a reason given through the API (bytes).
const maxReasonLen = 1000

// suppressionEntry is an entry in answers.
type suppressionEntry struct {
	Address   string    `json:"address"`
	Tenant    string    `json:"tenant"`
	Reason    string    `json:"reason"`
	Class     string    `json:"class"`
	Source    string    `json:"source"`
	EventID   string    `json:"event_id"`
	MessageID string    `json:"message_id"`
	Created   time.Time `json:"created"`
}

func entryOf(e *spool.Suppression) suppressionEntry {
	return suppressionEntry{Address: e.Address, Tenant: e.Tenant, Reason: e.Reason, Class: e.Class, Source: e.Source,
		EventID: e.EventID, MessageID: e.MessageID, Created: e.Created.UTC()}
}

type suppressionList struct {
	Suppressions []suppressionEntry `json:"suppressions"`
	NextCursor   string             `json:"next_cursor,omitempty"`
}

// suppressions routes /v1/suppressions and /v1/suppressions/{address}.
func (s *Server) suppressions(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	if p == suppressionsPath {
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			s.listSuppressions(w, r)
		case http.MethodPost:
			s.addSuppression(w, r)
		default:
			s.notAllowed(w, "GET, POST")
		}
		return
	}
	addr := strings.TrimPrefix(p, suppressionsPath+"/")
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		s.getSuppression(w, r, addr)
	case http.MethodDelete:
		s.removeSuppression(w, r, addr)
	default:
		s.notAllowed(w, "GET, DELETE")
	}
}

func (s *Server) notAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	s.fail(w, errf(http.StatusMethodNotAllowed, codeMethodNotAllowed, "", "use %s", allow))
}

// suppTenant authenticates the request and returns the tenant it works
// on. allowed lists the query parameters besides tenant.
func (s *Server) suppTenant(ctx context.Context, r *http.Request, allowed ...string) (string, *apiError) {
	k, e := s.authenticate(r, apikey.ScopeSend, apikey.ScopeAdmin)
	if e != nil {
		return "", e
	}
	q := r.URL.Query()
	for name, vs := range q {
		if name != "tenant" && !contains(allowed, name) {
			return "", errf(http.StatusBadRequest, codeUnknownField, name, "unknown parameter %q", name)
		}
		if len(vs) > 1 {
			return "", badField(name, "%s is given more than once", name)
		}
	}
	if q.Has("tenant") {
		if !k.HasScope(apikey.ScopeAdmin) {
			return "", errf(http.StatusForbidden, codeForbidden, "tenant", "only a key with the %q scope may name a tenant", apikey.ScopeAdmin)
		}
		t := q.Get("tenant")
		if t != "" && !pipeline.ValidTenant(t) {
			return "", badField("tenant", "tenant must be 1 to 64 letters, digits, '.', '_' or '-' (or empty for mail without a tenant)")
		}
		return t, nil
	}
	// The tenant the relay enforces the list for: the identity's after
	// on_connect and on_auth.
	conn := &pipeline.Conn{Source: pipeline.SourceHTTP, Listener: s.l.Addr, ServerName: s.host}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		conn.RemoteIP, conn.RemotePort = ap.Addr().Unmap(), ap.Port()
	}
	sess := s.relay.NewSession(conn)
	if err := sess.Connect(ctx); err != nil {
		return "", fromAccess(err)
	}
	if _, err := sess.Verified(ctx, k.credentials(), k.Identity()); err != nil {
		return "", fromAccess(err)
	}
	return conn.Tenant(), nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// suppAddress checks an address from the path or the body (field names
// it in errors) and returns its canonical form.
func suppAddress(field, addr string) (string, *apiError) {
	if addr == "" {
		return "", missingField(field)
	}
	c, err := spool.CanonicalAddress(addr)
	if err != nil {
		return "", badField(field, "%s is not an email address (local@domain): %s", field, pipeline.Reply(err).Message)
	}
	return c, nil
}

func (s *Server) storeFailed(w http.ResponseWriter, what string, err error) {
	s.log.Error("suppression list: "+what, "err", err)
	s.fail(w, errf(http.StatusServiceUnavailable, codeUnavailable, "", "cannot %s now, try again later", what))
}

func (s *Server) writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		s.fail(w, errInternal)
		return
	}
	s.writeAnswer(w, answer{status: status, body: b})
}

// GET /v1/suppressions?limit=&cursor=
func (s *Server) listSuppressions(w http.ResponseWriter, r *http.Request) {
	tenant, e := s.suppTenant(r.Context(), r, "limit", "cursor")
	if e != nil {
		s.fail(w, e)
		return
	}
	q := r.URL.Query()
	limit := spool.DefaultSuppressionLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > spool.MaxSuppressionLimit {
			s.fail(w, badField("limit", "limit must be an integer from 1 to %d", spool.MaxSuppressionLimit))
			return
		}
		limit = n
	}
	p, err := s.sp.ListSuppressions(tenant, q.Get("cursor"), limit)
	if errors.Is(err, spool.ErrBadCursor) {
		s.fail(w, badField("cursor", "cursor is not a next_cursor of this listing"))
		return
	}
	if err != nil {
		s.storeFailed(w, "read the suppression list", err)
		return
	}
	a := suppressionList{Suppressions: make([]suppressionEntry, 0, len(p.Entries)), NextCursor: p.Next}
	for i := range p.Entries {
		a.Suppressions = append(a.Suppressions, entryOf(&p.Entries[i]))
	}
	s.writeJSON(w, http.StatusOK, a)
}

// GET /v1/suppressions/{address}
func (s *Server) getSuppression(w http.ResponseWriter, r *http.Request, raw string) {
	tenant, e := s.suppTenant(r.Context(), r)
	if e != nil {
		s.fail(w, e)
		return
	}
	addr, e := suppAddress("address", raw)
	if e != nil {
		s.fail(w, e)
		return
	}
	ent, err := s.sp.GetSuppression(tenant, addr)
	if err != nil {
		s.storeFailed(w, "read the suppression list", err)
		return
	}
	if ent == nil {
		s.fail(w, errf(http.StatusNotFound, codeNotFound, "address", "%s is not on the suppression list", addr))
		return
	}
	s.writeJSON(w, http.StatusOK, entryOf(ent))
}

// POST /v1/suppressions {"address": ..., "reason": ..., "source": "api"|"cli"}
func (s *Server) addSuppression(w http.ResponseWriter, r *http.Request) {
	tenant, f, e := s.tenantFields(w, r, `{"address": "...", "reason": "..."}`, "address", "reason", "source")
	if e != nil {
		s.fail(w, e)
		return
	}
	in := struct{ address, reason, source string }{f["address"], f["reason"], f["source"]}
	addr, e := suppAddress("address", in.address)
	if e != nil {
		s.fail(w, e)
		return
	}
	if len(in.reason) > maxReasonLen || !utf8.ValidString(in.reason) || strings.ContainsAny(in.reason, "\r\n\x00") {
		s.fail(w, badField("reason", "reason must be one line of UTF-8 text of at most %d bytes", maxReasonLen))
		return
	}
	switch in.source {
	case "":
		in.source = spool.SuppressionAPI
	case spool.SuppressionAPI, spool.SuppressionCLI:
	default:
		s.fail(w, badField("source", "source must be %q or %q", spool.SuppressionAPI, spool.SuppressionCLI))
		return
	}
	ent := &spool.Suppression{Tenant: tenant, Address: addr, Reason: in.reason, Source: in.source, Created: s.now().UTC()}
	prev, err := s.sp.AddSuppression(ent)
	if err != nil {
		s.storeFailed(w, "add to the suppression list", err)
		return
	}
	s.log.Info("address suppressed", "tenant", tenant, "rcpt", addr, "source", in.source, "replaced", prev != nil)
	status := http.StatusCreated
	if prev != nil {
		status = http.StatusOK
	}
	s.writeJSON(w, status, entryOf(ent))
}

// DELETE /v1/suppressions/{address}[?source=cli]
func (s *Server) removeSuppression(w http.ResponseWriter, r *http.Request, raw string) {
	tenant, e := s.suppTenant(r.Context(), r, "source")
	if e != nil {
		s.fail(w, e)
		return
	}
	addr, e := suppAddress("address", raw)
	if e != nil {
		s.fail(w, e)
		return
	}
	source := r.URL.Query().Get("source")
	switch source {
	case "":
		source = spool.SuppressionAPI
	case spool.SuppressionAPI, spool.SuppressionCLI:
	default:
		s.fail(w, badField("source", "source must be %q or %q", spool.SuppressionAPI, spool.SuppressionCLI))
		return
	}
	ent, err := s.sp.RemoveSuppression(tenant, addr, source)
	if err != nil {
		s.storeFailed(w, "remove from the suppression list", err)
		return
	}
	if ent == nil {
		s.fail(w, errf(http.StatusNotFound, codeNotFound, "address", "%s is not on the suppression list", addr))
		return
	}
	s.log.Info("address removed from the suppression list", "tenant", tenant, "rcpt", addr, "source", source)
	s.writeJSON(w, http.StatusOK, entryOf(ent))
}
