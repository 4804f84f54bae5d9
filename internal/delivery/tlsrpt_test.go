package delivery_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/mtasts"
	"github.com/sluice-mta/sluice/internal/mtasts/ststest"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/internal/tlsrpt"
	"github.com/sluice-mta/sluice/internal/tlsrpt/tlsrpttest"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestTLSReportDay runs a day of deliveries (successes, MTA-STS
// failures under enforce and testing, no policy, a policy that cannot be
// fetched) through a Dialer whose TLSReport feeds a tlsrpt.Recorder, and
// checks each domain's aggregate report: counts, result types, and the
// RFC 8460 schema.
func TestTLSReportDay(t *testing.T) {
	ss := newSTSSinks(t, "mx.good.test", "mx.nopolicy.test")
	e, roots, wrongSink := ss.e, ss.roots, ss.wrong

	policy := stsPolicy
	servers := serveSTS(t, e, roots, map[string]string{
		"good.test":    policy("enforce", "mx.good.test"),
		"mixed.test":   policy("enforce", "*.mixed.test"),
		"nomatch.test": policy("enforce", "mx.elsewhere.test"),
		"testing.test": policy("testing", "mx.testing.test"),
		"broken.test":  "",
	})
	servers["mta-sts.broken.test"].Set("", http.StatusNotFound)
	// mixed.test: a host with a certificate for another name (preferred)
	// and one without STARTTLS.
	e.DNS.AddMX("mixed.test", 10, "a.mixed.test")
	e.DNS.AddMX("mixed.test", 20, "b.mixed.test")
	e.DNS.AddA("a.mixed.test", "127.0.0.3")
	e.DNS.AddA("b.mixed.test", "127.0.0.4")
	addMX(e, map[string]string{"good.test": "127.0.0.2", "nomatch.test": "127.0.0.2",
		"testing.test": "127.0.0.3", "nopolicy.test": "127.0.0.2", "broken.test": "127.0.0.2"})
	day := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	rec := tlsrpt.NewRecorder(tlsrpt.Options{Now: func() time.Time { return day }})
	e.D.TLSReport = func(s tlsrpt.Session) { s.Time = day; rec.Record(s) }

	ctx := context.Background()
	deliver := func(domain string, n int) {
		for range n {
			s := dial(t, e, pipeline.MX(), domain)
			if per, err := s.Send(ctx, "a@sender.test", []string{"b@" + domain}, message(300)); err != nil || per[0] != nil {
				t.Fatalf("%s: Send = %v, %v", domain, per, err)
			}
			s.Close()
		}
	}
	refused := func(domain string, n int) {
		for range n {
			if s, err := e.D.Dial(ctx, pipeline.MX(), domain); err == nil {
				s.Close()
				t.Fatalf("%s: Dial succeeded under an enforced policy it breaks", domain)
			}
		}
	}
	deliver("good.test", 3)
	deliver("nopolicy.test", 2)
	deliver("testing.test", 2) // delivered, certificate for another name
	deliver("broken.test", 3)  // delivered without a policy: fetch error
	// The failed fetch is remembered (mtasts.DefaultFailureTTL): one
	// request, yet every session counts as a fetch error.
	if n := servers["mta-sts.broken.test"].Hits(); n != 1 {
		t.Fatalf("broken.test: policy fetched %d times, want 1", n)
	}
	refused("nomatch.test", 2)
	refused("mixed.test", 1) // two attempts: host mismatch, then no STARTTLS
	if n := len(wrongSink.Messages()); n != 2 {
		t.Fatalf("the testing-mode sink got %d messages, want 2", n)
	}

	meta := tlsrpt.Meta{Organization: "Sluice Test", Contact: "postmaster@sluice.test", Hostname: "sluice.test"}
	type want struct {
		typ         string
		ok, fail    int64
		results     []string
		policyLines int
	}
	for domain, w := range map[string]want{
		"good.test":     {tlsrpt.PolicySTS, 3, 0, nil, 4},
		"nopolicy.test": {tlsrpt.PolicyNotFound, 2, 0, nil, 0},
		"testing.test":  {tlsrpt.PolicySTS, 0, 2, []string{tlsrpt.ResultCertHostMismatch}, 4},
		"broken.test":   {tlsrpt.PolicySTS, 0, 3, []string{tlsrpt.ResultSTSPolicyFetchError}, 0},
		"nomatch.test":  {tlsrpt.PolicySTS, 0, 2, []string{tlsrpt.ResultValidationFailure}, 4},
		"mixed.test":    {tlsrpt.PolicySTS, 0, 2, []string{tlsrpt.ResultCertHostMismatch, tlsrpt.ResultSTARTTLSNotSupported}, 4},
	} {
		rep, err := rec.Report("2026-11-29", domain, meta)
		if err != nil || rep == nil {
			t.Fatalf("%s: Report = %v, %v", domain, rep, err)
		}
		js, err := rep.Marshal(true)
		if err != nil {
			t.Fatal(err)
		}
		tlsrpttest.Validate(t, js)
		if len(rep.Policies) != 1 {
			t.Fatalf("%s: %d policies, want 1:\n%s", domain, len(rep.Policies), js)
		}
		p := rep.Policies[0]
		var results []string
		for _, d := range p.FailureDetails {
			results = append(results, d.ResultType)
		}
		slices.Sort(results)
		slices.Sort(w.results)
		if p.Policy.Type != w.typ || p.Policy.Domain != domain || p.Summary.Successful != w.ok || p.Summary.Failure != w.fail ||
			!slices.Equal(results, w.results) || len(p.Policy.String) != w.policyLines {
			t.Errorf("%s: report\n%s\nwant type %s, %d ok, %d failed, results %v, %d policy lines", domain, js, w.typ, w.ok, w.fail, w.results, w.policyLines)
		}
		if rep.DateRange.Start != time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC) {
			t.Errorf("%s: date-range %+v", domain, rep.DateRange)
		}
	}
	rep, _ := rec.Report("2026-11-29", "mixed.test", meta)
	for _, d := range rep.Policies[0].FailureDetails {
		if d.ReceivingIP == "" || d.SendingMTAIP == "" || d.ReceivingMXHostname == "" {
			t.Errorf("failure detail lacks the session's addresses: %+v", d)
		}
	}
	if got := rec.Domains("2026-11-29"); len(got) != 6 {
		t.Errorf("Domains = %v, want 6", got)
	}
}

// TestTLSFailureTestingMode checks Remote().TLSFailure for an MTA-STS
// policy in testing mode whose MX host presents a certificate for
// another name.
func TestTLSFailureTestingMode(t *testing.T) {
	wrong := testutil.SelfSignedCert(t, "other.test")
	sink := newSink(t, testutil.SinkOptions{IP: "127.0.0.3", TLS: wrong.TLS})
	e := newEnv(t, sink.Port)
	srv := ststest.StartServer(t, "version: STSv1\nmode: testing\nmx: mx.t.test\nmax_age: 600\n", "mta-sts.t.test")
	roots := srv.Cert.Pool
	e.D.TLSConfig = &tls.Config{RootCAs: roots}
	e.DNS.AddTXT("_mta-sts.t.test", "v=STSv1; id=1")
	e.DNS.AddMX("t.test", 10, "mx.t.test")
	e.DNS.AddA("mx.t.test", "127.0.0.3")
	e.D.MTASTS = &mtasts.Cache{Resolver: e.D.Resolver, RootCAs: roots, DialContext: srv.Dial}
	s := dial(t, e, pipeline.MX(), "t.test")
	if r := s.Remote(); r.TLSFailure != tlsrpt.ResultCertNotTrusted && r.TLSFailure != tlsrpt.ResultCertHostMismatch {
		t.Fatalf("Remote() = %+v, want a certificate result type in TLSFailure", r)
	}
}

// TestTLSReportDANE checks that sessions under DANE are reported with
// policy type "tlsa" and the host's TLSA records as the policy string
// (not as no-policy-found), and that a TLSA mismatch is a tlsa-invalid
// failure.
func TestTLSReportDANE(t *testing.T) {
	ee := testutil.SelfSignedCert(t, "unrelated.example")
	sink := newSink(t, testutil.SinkOptions{IP: "127.0.0.2", TLS: ee.TLS})
	e := daneEnv(t, sink.Port)
	mx := mxTo(e, "dane.test", "127.0.0.2", true)
	tlsa(e, mx, 3, 1, ee.Leaf.RawSubjectPublicKeyInfo, true)
	mx = mxTo(e, "bad.test", "127.0.0.2", true)
	tlsa(e, mx, 3, 1, []byte("not the key"), true)

	day := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	rec := tlsrpt.NewRecorder(tlsrpt.Options{Now: func() time.Time { return day }})
	e.D.TLSReport = func(s tlsrpt.Session) { s.Time = day; rec.Record(s) }

	for range 2 {
		if r := sendTo(t, e, pipeline.MX(), "dane.test"); r.TLSPolicy != "dane" {
			t.Fatalf("Remote() = %+v", r)
		}
	}
	deferredTLS(t, e, pipeline.MX(), "bad.test", "4.7.5", "matches no TLSA record", "tlsa-invalid")

	meta := tlsrpt.Meta{Organization: "Sluice Test", Contact: "postmaster@sluice.test", Hostname: "sluice.test"}
	for domain, w := range map[string]struct {
		ok, fail int64
		result   string
	}{"dane.test": {2, 0, ""}, "bad.test": {0, 1, tlsrpt.ResultTLSAInvalid}} {
		rep, err := rec.Report("2026-11-29", domain, meta)
		if err != nil || rep == nil {
			t.Fatalf("%s: Report = %v, %v", domain, rep, err)
		}
		js, _ := rep.Marshal(true)
		tlsrpttest.Validate(t, js)
		if len(rep.Policies) != 1 {
			t.Fatalf("%s: %d policies, want 1:\n%s", domain, len(rep.Policies), js)
		}
		p := rep.Policies[0]
		if p.Policy.Type != tlsrpt.PolicyTLSA || len(p.Policy.String) != 1 || !strings.HasPrefix(p.Policy.String[0], "3 1 1 ") ||
			p.Summary.Successful != w.ok || p.Summary.Failure != w.fail {
			t.Errorf("%s: report\n%s", domain, js)
		}
		if w.result != "" && (len(p.FailureDetails) != 1 || p.FailureDetails[0].ResultType != w.result) {
			t.Errorf("%s: failure details %+v, want %s", domain, p.FailureDetails, w.result)
		}
	}
}

// TestTLSReportClearText checks that a session without TLS to a domain
// without a policy is not counted as successful (RFC 8460 section 4.4:
// successful sessions are "successfully negotiated TLS-enabled
// connections"), but as a starttls-not-supported failure.
func TestTLSReportClearText(t *testing.T) {
	sink := newSink(t, testutil.SinkOptions{IP: "127.0.0.3"}) // no STARTTLS
	e := newEnv(t, sink.Port)
	addMX(e, map[string]string{"plain.test": "127.0.0.3"})
	day := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	rec := tlsrpt.NewRecorder(tlsrpt.Options{Now: func() time.Time { return day }})
	e.D.TLSReport = func(s tlsrpt.Session) { s.Time = day; rec.Record(s) }
	s := dial(t, e, pipeline.MX(), "plain.test")
	if per, err := s.Send(context.Background(), "a@sender.test", []string{"b@plain.test"}, message(300)); err != nil || per[0] != nil {
		t.Fatalf("Send = %v, %v", per, err)
	}
	rep, err := rec.Report("2026-11-29", "plain.test", tlsrpt.Meta{Organization: "o", Contact: "c", Hostname: "h"})
	if err != nil || rep == nil || len(rep.Policies) != 1 {
		t.Fatalf("Report = %+v, %v", rep, err)
	}
	p := rep.Policies[0]
	if p.Policy.Type != tlsrpt.PolicyNotFound || p.Summary.Successful != 0 || p.Summary.Failure != 1 ||
		len(p.FailureDetails) != 1 || p.FailureDetails[0].ResultType != tlsrpt.ResultSTARTTLSNotSupported {
		t.Fatalf("report of a clear-text session: %+v", p)
	}
}
