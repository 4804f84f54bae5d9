package httpapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/internal/dkim"
	"github.com/sluice-mta/sluice/internal/domains"
	"github.com/sluice-mta/sluice/internal/spool"
)

// The sending domains API (docs/http-api.md, docs/domains.md):
//
//	GET    /v1/domains                 the tenant's domains
//	POST   /v1/domains                 {"domain"} → 201 with the records to publish (409 if registered)
//	GET    /v1/domains/{domain}        the domain and each record verified / missing / wrong with its fix
//	                                   (?fresh=true skips the check cache)
//	DELETE /v1/domains/{domain}        200 with the removed domain, or 404
//	POST   /v1/domains/{domain}/rotate 202: a DKIM key rotation starts (409 if one is under way;
//	                                   404 without sluice.dns_server)
//	DELETE /v1/domains/{domain}/rotate 200: the rotation under way is cancelled, its pending key
//	                                   removed (409 if none is under way)
//
// Scoped to one tenant like the suppression list (suppTenant). Without a
// registry (UseDomains) every request is 404.

const domainsPath = "/v1/domains"

// UseDomains serves the domains API from reg. Call before Serve.
func (s *Server) UseDomains(reg *domains.Registry) { s.domains.Store(reg) }

// domainAnswer is a domain in answers. Records carries the check when
// there was one (GET of one domain), else the records to publish.
type domainAnswer struct {
	Domain   string           `json:"domain"`
	Tenant   string           `json:"tenant"`
	State    string           `json:"state"` // verified, unverified
	Verified *time.Time       `json:"verified,omitempty"`
	Created  time.Time        `json:"created"`
	Records  []domains.Status `json:"records"`
	Keys     []keyAnswer      `json:"keys"`
}

// keyAnswer is one DKIM key of a domain, without its private half.
type keyAnswer struct {
	Selector string    `json:"selector"`
	Algo     string    `json:"algo"`
	State    string    `json:"state"` // pending, active, retired, revoked
	Since    time.Time `json:"since"`
}

func domainOf(d *spool.Domain, st []domains.Status) domainAnswer {
	a := domainAnswer{Domain: d.Domain, Tenant: d.Tenant, State: "unverified", Created: d.Created.UTC(), Records: st, Keys: []keyAnswer{}}
	for _, k := range d.Keys {
		a.Keys = append(a.Keys, keyAnswer{Selector: k.Selector, Algo: k.Algo, State: k.State, Since: k.StateSince().UTC()})
	}
	if !d.Verified.IsZero() {
		v := d.Verified.UTC()
		a.State, a.Verified = "verified", &v
	}
	return a
}

// unchecked is recs as statuses with no state (not looked up yet).
func unchecked(recs []domains.Record) []domains.Status {
	out := make([]domains.Status, len(recs))
	for i, r := range recs {
		out[i] = domains.Status{Record: r}
	}
	return out
}

func (s *Server) domainsAPI(w http.ResponseWriter, r *http.Request) {
	reg := s.domains.Load()
	if reg == nil {
		s.fail(w, errf(http.StatusNotFound, codeNotFound, "", "sending domains are not enabled on this node"))
		return
	}
	p := r.URL.Path
	if p == domainsPath {
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			s.listDomains(reg, w, r)
		case http.MethodPost:
			s.addDomain(reg, w, r)
		default:
			s.notAllowed(w, "GET, POST")
		}
		return
	}
	name := dkim.NormalizeDomain(strings.TrimPrefix(p, domainsPath+"/"))
	if n, ok := strings.CutSuffix(name, "/rotate"); ok {
		switch r.Method {
		case http.MethodPost:
			s.rotateDomain(reg, w, r, n)
		case http.MethodDelete:
			s.cancelRotation(reg, w, r, n)
		default:
			s.notAllowed(w, "POST, DELETE")
		}
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		s.getDomain(reg, w, r, name)
	case http.MethodDelete:
		s.removeDomain(reg, w, r, name)
	default:
		s.notAllowed(w, "GET, DELETE")
	}
}

// validDomain: a DNS name of at least two labels of letters, digits and
// '-' (RFC 1035 section 2.3.1 preferred syntax), at most 253 octets.
func validDomain(d string) bool {
	if len(d) > 253 || !strings.Contains(d, ".") {
		return false
	}
	for _, l := range strings.Split(d, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// tenantFields authenticates a POST of the tenant-scoped APIs
// (suppTenant) and decodes its body with stringFields.
func (s *Server) tenantFields(w http.ResponseWriter, r *http.Request, example string, names ...string) (string, map[string]string, *apiError) {
	tenant, e := s.suppTenant(r.Context(), r)
	if e != nil {
		return "", nil, e
	}
	buf, e := s.readBody(w, r)
	if e != nil {
		return "", nil, e
	}
	defer putBuf(buf)
	f, e := stringFields(buf.Bytes(), example, names...)
	return tenant, f, e
}

// stringFields decodes a JSON object body whose fields are all strings
// and among names: a body that is not an object is invalid_json (example
// shows the expected shape), another field unknown_field, a value that is
// not a string invalid_field. Absent fields are "".
func stringFields(body []byte, example string, names ...string) (map[string]string, *apiError) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil || fields == nil {
		return nil, errf(http.StatusBadRequest, codeInvalidJSON, "", "the body must be a JSON object: %s", example)
	}
	out := make(map[string]string, len(names))
	for name, v := range fields {
		if !contains(names, name) {
			return nil, errf(http.StatusBadRequest, codeUnknownField, name, "unknown field %q (want %s)", name, strings.Join(names, ", "))
		}
		var str string
		if err := json.Unmarshal(v, &str); err != nil {
			return nil, badField(name, "%s must be a string", name)
		}
		out[name] = str
	}
	return out, nil
}

func (s *Server) domainsFailed(w http.ResponseWriter, what string, err error) {
	s.log.Error("sending domains: "+what, "err", err)
	s.fail(w, errf(http.StatusServiceUnavailable, codeUnavailable, "", "cannot %s now, try again later", what))
}

// POST /v1/domains {"domain": "example.com"}
func (s *Server) addDomain(reg *domains.Registry, w http.ResponseWriter, r *http.Request) {
	tenant, f, e := s.tenantFields(w, r, `{"domain": "example.com"}`, "domain")
	if e != nil {
		s.fail(w, e)
		return
	}
	name := f["domain"]
	if name == "" {
		s.fail(w, missingField("domain"))
		return
	}
	name = dkim.NormalizeDomain(name)
	if !validDomain(name) {
		s.fail(w, badField("domain", "domain must be a DNS name such as example.com (letters, digits, '-', at least two labels)"))
		return
	}
	d, err := reg.Add(tenant, name)
	var notReg *domains.NotRegistrableError
	switch {
	case errors.As(err, &notReg):
		s.fail(w, badField("domain", "%s", notReg.Why))
		return
	case errors.Is(err, domains.ErrExists):
		s.fail(w, errf(http.StatusConflict, codeConflict, "domain", "%s is registered already: GET %s/%s", name, domainsPath, name))
		return
	case errors.Is(err, domains.ErrTaken):
		s.fail(w, errf(http.StatusConflict, codeConflict, "domain", "%s is registered by another tenant", name))
		return
	case err != nil:
		s.domainsFailed(w, "register the domain", err)
		return
	}
	s.log.Info("sending domain registered", "tenant", tenant, "domain", name)
	s.writeRecords(reg, w, http.StatusCreated, d)
}

// writeRecords answers d with the records it must publish, unchecked.
func (s *Server) writeRecords(reg *domains.Registry, w http.ResponseWriter, status int, d *spool.Domain) {
	recs, err := reg.Records(d)
	if err != nil {
		s.domainsFailed(w, "build the records", err)
		return
	}
	s.writeJSON(w, status, domainOf(d, unchecked(recs)))
}

// GET /v1/domains
func (s *Server) listDomains(reg *domains.Registry, w http.ResponseWriter, r *http.Request) {
	tenant, e := s.suppTenant(r.Context(), r)
	if e != nil {
		s.fail(w, e)
		return
	}
	ds, err := reg.List(tenant)
	if err != nil {
		s.domainsFailed(w, "read the domains", err)
		return
	}
	out := struct {
		Domains []domainAnswer `json:"domains"`
	}{Domains: []domainAnswer{}}
	for i := range ds {
		recs, err := reg.Records(&ds[i])
		if err != nil {
			s.domainsFailed(w, "build the records", err)
			return
		}
		out.Domains = append(out.Domains, domainOf(&ds[i], unchecked(recs)))
	}
	s.writeJSON(w, http.StatusOK, out)
}

// GET /v1/domains/{domain}[?fresh=true]
func (s *Server) getDomain(reg *domains.Registry, w http.ResponseWriter, r *http.Request, name string) {
	tenant, e := s.suppTenant(r.Context(), r, "fresh")
	if e != nil {
		s.fail(w, e)
		return
	}
	fresh := false
	switch r.URL.Query().Get("fresh") {
	case "", "false":
	case "true":
		fresh = true
	default:
		s.fail(w, badField("fresh", "fresh must be true or false"))
		return
	}
	d, err := reg.Get(tenant, name)
	if err != nil {
		s.domainsFailed(w, "read the domain", err)
		return
	}
	if d == nil {
		s.fail(w, errf(http.StatusNotFound, codeNotFound, "domain", "%s is not a registered domain", name))
		return
	}
	st, err := reg.Check(r.Context(), d, fresh)
	if err != nil {
		s.domainsFailed(w, "check the domain", err)
		return
	}
	s.writeJSON(w, http.StatusOK, domainOf(d, st))
}

// DELETE /v1/domains/{domain}
func (s *Server) removeDomain(reg *domains.Registry, w http.ResponseWriter, r *http.Request, name string) {
	tenant, e := s.suppTenant(r.Context(), r)
	if e != nil {
		s.fail(w, e)
		return
	}
	d, err := reg.Remove(tenant, name)
	if err != nil {
		s.domainsFailed(w, "remove the domain", err)
		return
	}
	if d == nil {
		s.fail(w, errf(http.StatusNotFound, codeNotFound, "domain", "%s is not a registered domain", name))
		return
	}
	s.log.Info("sending domain removed", "tenant", tenant, "domain", d.Domain)
	s.writeJSON(w, http.StatusOK, domainOf(d, nil))
}

// rotationTenant is the tenant of a /rotate request; ok false after
// answering (bad key, or no DNS listener).
func (s *Server) rotationTenant(reg *domains.Registry, w http.ResponseWriter, r *http.Request) (tenant string, ok bool) {
	tenant, e := s.suppTenant(r.Context(), r)
	if e != nil {
		s.fail(w, e)
		return "", false
	}
	if reg.Delegation() == nil {
		s.fail(w, errf(http.StatusNotFound, codeNotFound, "", "key rotation needs sluice.dns_server on this node (docs/rotation.md)"))
		return "", false
	}
	return tenant, true
}

// DELETE /v1/domains/{domain}/rotate
func (s *Server) cancelRotation(reg *domains.Registry, w http.ResponseWriter, r *http.Request, name string) {
	tenant, ok := s.rotationTenant(reg, w, r)
	if !ok {
		return
	}
	d, err := reg.CancelRotation(tenant, name)
	switch {
	case errors.Is(err, domains.ErrNotRotating):
		s.fail(w, errf(http.StatusConflict, codeConflict, "domain", "no key rotation of %s is under way", name))
		return
	case err != nil:
		s.domainsFailed(w, "cancel the rotation", err)
		return
	case d == nil:
		s.fail(w, errf(http.StatusNotFound, codeNotFound, "domain", "%s is not a registered domain", name))
		return
	}
	s.log.Info("dkim key rotation cancelled", "tenant", tenant, "domain", d.Domain)
	s.writeRecords(reg, w, http.StatusOK, d)
}

// POST /v1/domains/{domain}/rotate
func (s *Server) rotateDomain(reg *domains.Registry, w http.ResponseWriter, r *http.Request, name string) {
	tenant, ok := s.rotationTenant(reg, w, r)
	if !ok {
		return
	}
	d, err := reg.RequestRotation(tenant, name)
	switch {
	case errors.Is(err, domains.ErrRotating):
		s.fail(w, errf(http.StatusConflict, codeConflict, "domain", "a key rotation of %s is already under way: GET %s/%s shows its keys", name, domainsPath, name))
		return
	case err != nil:
		s.domainsFailed(w, "request the rotation", err)
		return
	case d == nil:
		s.fail(w, errf(http.StatusNotFound, codeNotFound, "domain", "%s is not a registered domain", name))
		return
	}
	s.log.Info("dkim key rotation requested", "tenant", tenant, "domain", d.Domain)
	s.writeRecords(reg, w, http.StatusAccepted, d)
}
