package httpapi

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/tlsrpt"
	"github.com/sluice-mta/sluice/internal/tlsrpt/tlsrpttest"
)

type recorderReports struct{ r *tlsrpt.Recorder }

func (a recorderReports) Domains(day string) []string                       { return a.r.Domains(day) }
func (a recorderReports) Sent(day, domain string) bool                      { return a.r.Sent(day, domain) }
func (a recorderReports) Send(ctx context.Context, day string) (int, error) { return 0, nil }
func (a recorderReports) Report(day, domain string) (*tlsrpt.Report, error) {
	return a.r.Report(day, domain, tlsrpt.Meta{Organization: "Relay Test", Contact: "postmaster@relay.test", Hostname: "relay.test"})
}

// TestTLSReportsAPI reads a day's reports through GET
// /v1/admin/tls-reports (responses checked against openapi.json).
func TestTLSReportsAPI(t *testing.T) {
	e := newEnv(t, envOptions{noDelivery: true})
	if r := e.do("GET", "/v1/admin/tls-reports", e.adminKey, nil); r.Status != 404 || r.errorOf(t).Code != codeNotFound {
		t.Fatalf("without TLS reporting: %d %s", r.Status, r.Body)
	}
	rec := tlsrpt.NewRecorder(tlsrpt.Options{})
	day := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	for i := range 3 {
		s := tlsrpt.Session{Time: day, Domain: "a.test", Type: tlsrpt.PolicySTS, Policy: []string{"version: STSv1"}, MXHost: "mx.a.test"}
		if i == 0 {
			s.Result, s.ReceivingIP = tlsrpt.ResultSTARTTLSNotSupported, "192.0.2.1"
		}
		rec.Record(s)
	}
	rec.Record(tlsrpt.Session{Time: day, Domain: "b.test", Type: tlsrpt.PolicyNotFound})
	e.srv.UseTLSReports(recorderReports{rec})

	r := e.do("GET", "/v1/admin/tls-reports?day=2026-11-29", e.adminKey, nil)
	var a struct {
		Day     string `json:"day"`
		Reports []struct {
			Domain string          `json:"domain"`
			Sent   bool            `json:"sent"`
			Report json.RawMessage `json:"report"`
		} `json:"reports"`
	}
	r.json(t, &a)
	if r.Status != 200 || a.Day != "2026-11-29" || len(a.Reports) != 2 || a.Reports[0].Domain != "a.test" || a.Reports[0].Sent {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	for _, rp := range a.Reports {
		tlsrpttest.Validate(t, rp.Report)
	}
	r = e.do("GET", "/v1/admin/tls-reports?day=2026-11-29&domain=A.test", e.adminKey, nil)
	r.json(t, &a)
	if len(a.Reports) != 1 || a.Reports[0].Domain != "a.test" {
		t.Fatalf("domain filter: %s", r.Body)
	}
	if r := e.do("GET", "/v1/admin/tls-reports?day=2026-11-28", e.adminKey, nil); r.Status != 200 {
		t.Fatalf("a day without counts: %d %s", r.Status, r.Body)
	}
	if r := e.do("GET", "/v1/admin/tls-reports?day=yesterday", e.adminKey, nil); r.Status != 400 || r.errorOf(t).Field != "day" {
		t.Fatalf("bad day: %d %s", r.Status, r.Body)
	}
	if r := e.do("GET", "/v1/admin/tls-reports?dya=2026-11-29", e.adminKey, nil); r.Status != 400 || r.errorOf(t).Code != codeUnknownField {
		t.Fatalf("unknown parameter: %d %s", r.Status, r.Body)
	}
	if r := e.do("POST", "/v1/admin/tls-reports/send?day=2026-11-29", e.adminKey, nil); r.Status != 200 {
		t.Fatalf("send: %d %s", r.Status, r.Body)
	}
	if r := e.do("POST", "/v1/admin/tls-reports/send?domain=a.test", e.adminKey, nil); r.Status != 400 {
		t.Fatalf("send with a domain: %d %s", r.Status, r.Body)
	}
	if r := e.do("GET", "/v1/admin/tls-reports", e.sendKey, nil); r.Status != 403 {
		t.Fatalf("send key: %d %s", r.Status, r.Body)
	}
}
