package httpapi

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/internal/apikey"
	"github.com/sluice-mta/sluice/internal/tlsrpt"
)

// tlsReportsPath serves the node's TLS reports (RFC 8460) as they stand:
// GET ?day=YYYY-MM-DD[&domain=D]; POST tlsReportsPath+"/send?day=D"
// sends that day's reports now. Scope: admin.
const tlsReportsPath = "/v1/admin/tls-reports"

// TLSReports is what the TLS reports endpoint reads: the node's
// tlsrpt.Recorder with the report's organization and contact
// (internal/server wires it).
type TLSReports interface {
	// Domains lists the policy domains with counts on day.
	Domains(day string) []string
	// Report is day's report for domain, nil when nothing was counted.
	Report(day, domain string) (*tlsrpt.Report, error)
	// Sent reports whether day's report for domain was delivered.
	Sent(day, domain string) bool
	// Send delivers day's reports not delivered yet to their rua now
	// and returns how many went out (tlsrpt.Reporter.SendDay).
	Send(ctx context.Context, day string) (int, error)
}

type tlsReportsHolder struct{ r TLSReports }

// UseTLSReports enables GET /v1/admin/tls-reports; without it the
// endpoint answers 404 (TLS reporting not enabled on this node).
func (s *Server) UseTLSReports(r TLSReports) { s.tlsReports.Store(&tlsReportsHolder{r}) }

// tlsReportsAnswer is the endpoint's answer.
type tlsReportsAnswer struct {
	Day     string           `json:"day"`
	Reports []tlsReportEntry `json:"reports"`
}

type tlsReportEntry struct {
	Domain string         `json:"domain"`
	Sent   bool           `json:"sent"`
	Report *tlsrpt.Report `json:"report"`
}

func (s *Server) tlsReportsAPI(w http.ResponseWriter, r *http.Request) {
	send := r.URL.Path == tlsReportsPath+"/send"
	if send && !s.method(w, r, http.MethodPost) || !send && !s.method(w, r, http.MethodGet) {
		return
	}
	if _, e := s.authenticate(r, apikey.ScopeAdmin); e != nil {
		s.fail(w, e)
		return
	}
	h := s.tlsReports.Load()
	if h == nil {
		s.fail(w, errf(http.StatusNotFound, codeNotFound, "", "TLS reporting is not enabled on this node (sluice.tls_reporting, docs/tls-reporting.md)"))
		return
	}
	q := r.URL.Query()
	allowed := []string{"day", "domain"}
	if send {
		allowed = allowed[:1]
	}
	if e := onlyParams(q, allowed...); e != nil {
		s.fail(w, e)
		return
	}
	day := q.Get("day")
	if day == "" {
		day = s.now().UTC().AddDate(0, 0, -1).Format(time.DateOnly)
	} else if _, err := tlsrpt.Day(day); err != nil {
		s.fail(w, badField("day", "day must be a UTC date YYYY-MM-DD, got %q", day))
		return
	}
	if send {
		n, err := h.r.Send(r.Context(), day)
		if err != nil {
			s.log.Warn("sending TLS reports", "day", day, "err", err)
			s.fail(w, errf(http.StatusServiceUnavailable, codeUnavailable, "", "cannot send the reports now: %v", err))
			return
		}
		s.writeJSON(w, http.StatusOK, struct {
			Day  string `json:"day"`
			Sent int    `json:"sent"`
		}{day, n})
		return
	}
	domains := h.r.Domains(day)
	if d := strings.ToLower(strings.TrimSuffix(q.Get("domain"), ".")); d != "" {
		domains = []string{d}
	}
	a := tlsReportsAnswer{Day: day, Reports: []tlsReportEntry{}}
	for _, d := range domains {
		rep, err := h.r.Report(day, d)
		if err != nil || rep == nil {
			continue
		}
		a.Reports = append(a.Reports, tlsReportEntry{Domain: d, Sent: h.r.Sent(day, d), Report: rep})
	}
	s.writeJSON(w, http.StatusOK, a)
}

// onlyParams refuses query parameters not in allowed (400
// unknown_field).
func onlyParams(q url.Values, allowed ...string) *apiError {
	for k := range q {
		ok := false
		for _, a := range allowed {
			ok = ok || k == a
		}
		if !ok {
			return errf(http.StatusBadRequest, codeUnknownField, k, "unknown parameter %q", k)
		}
	}
	return nil
}
