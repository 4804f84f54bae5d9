package main

import (
	"bytes"
	"encoding/json"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/tlsrpt"
	"github.com/sluice-mta/sluice/internal/tlsrpt/tlsrpttest"
	"github.com/sluice-mta/sluice/pipeline"
)

const tlsrptConfig = `
sluice.tls_reporting {
  organization = "Relay E2E",
  contact = "mailto:postmaster@relay.e2e.test",
  from = "tlsrpt-noreply@relay.e2e.test",
  inbound_addresses = { "tlsrpt@relay.e2e.test" },
  flush_interval = "1s",
}
`

// TestTLSReportingEndToEnd, against the real binary: MX deliveries to a
// domain without MTA-STS, in clear text, are counted (no-policy-found,
// starttls-not-supported); the counts
// outlast a restart; `sluice tlsrpt report` shows the RFC 8460 report;
// `sluice tlsrpt send` queues it through the relay to the mailto: rua
// of the domain's _smtp._tls record, and the sink gets a
// multipart/report with the gzip report; that message, sent back to the
// relay's reporting address, becomes a tls_report event.
func TestTLSReportingEndToEnd(t *testing.T) {
	h, key, _ := newQueueEnv(t, tlsrptConfig)
	for _, d := range []string{"example.test", "reports.test", "relay.e2e.test"} {
		h.dns.AddMX(d, 10, "mx."+d)
		h.dns.AddA("mx."+d, "127.0.0.1")
	}
	h.dns.AddTXT("_smtp._tls.example.test", "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test")
	// One message, two recipients: one session (RFC 8460 counts
	// sessions, not messages or recipients).
	h.postMessage(key, "a@example.test", "b@example.test")
	waitFor(t, "the message at the sink", func() bool { return h.mx.count() == 1 })
	h.relay.waitEvents("delivered events", func(evs []pipeline.Event) bool {
		return findEvent(evs, pipeline.EventDelivered, "a@example.test") != nil &&
			findEvent(evs, pipeline.EventDelivered, "b@example.test") != nil
	})
	day := time.Now().UTC().Format(time.DateOnly)

	// A clean restart keeps the counts (flushed at stop).
	h.relay.stop()
	h.start()

	report := func() *tlsrpt.Report {
		t.Helper()
		out, errs, code := h.apiCLI(key, "tlsrpt", "report", "--day", day, "--domain", "example.test", "--json")
		if code != 0 {
			t.Fatalf("sluice tlsrpt report: exit %d\n%s%s", code, out, errs)
		}
		var a struct {
			Reports []struct {
				Sent   bool            `json:"sent"`
				Report json.RawMessage `json:"report"`
			} `json:"reports"`
		}
		if err := json.Unmarshal([]byte(out), &a); err != nil || len(a.Reports) != 1 {
			t.Fatalf("report --json printed %s (%v)", out, err)
		}
		tlsrpttest.Validate(t, a.Reports[0].Report)
		var rep tlsrpt.Report
		_ = json.Unmarshal(a.Reports[0].Report, &rep)
		return &rep
	}
	rep := report()
	// The sink offers no STARTTLS: a clear-text session is not a
	// successful one (RFC 8460 section 4.4), but starttls-not-supported.
	if len(rep.Policies) != 1 || rep.Policies[0].Policy.Type != tlsrpt.PolicyNotFound || rep.Policies[0].Summary.Successful != 0 ||
		rep.Policies[0].Summary.Failure != 1 || len(rep.Policies[0].FailureDetails) != 1 ||
		rep.Policies[0].FailureDetails[0].ResultType != tlsrpt.ResultSTARTTLSNotSupported || rep.OrganizationName != "Relay E2E" {
		t.Fatalf("report after a restart: %+v", rep)
	}
	if out, errs, code := h.apiCLI(key, "tlsrpt", "report", "--day", day); code != 0 || !strings.Contains(out, "example.test") || !strings.Contains(out, "no-policy-found") {
		t.Fatalf("report table: exit %d\n%s%s", code, out, errs)
	}
	if _, errs, code := h.apiCLI(key, "tlsrpt", "report", "--day", "30-11-2026"); code != 2 || !strings.Contains(errs, "--day") {
		t.Fatalf("bad --day: exit %d %s", code, errs)
	}

	if out, errs, code := h.apiCLI(key, "tlsrpt", "send", "--day", day); code != 0 || !strings.Contains(out, "1 report(s)") {
		t.Fatalf("sluice tlsrpt send: exit %d\n%s%s", code, out, errs)
	}
	waitFor(t, "the report at the rua's sink", func() bool { return h.mx.count() == 2 })
	got := h.mx.messages()[1]
	if got.From != "tlsrpt-noreply@relay.e2e.test" || len(got.Rcpts) != 1 || got.Rcpts[0] != "tlsrpt@reports.test" {
		t.Fatalf("report envelope %s → %v", got.From, got.Rcpts)
	}
	m, err := mail.ReadMessage(bytes.NewReader(got.Data))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, _ := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if mt != "multipart/report" || params["report-type"] != "tlsrpt" || m.Header.Get("TLS-Report-Domain") != "example.test" ||
		m.Header.Get("TLS-Report-Submitter") != "relay.e2e.test" || m.Header.Get("TLS-Required") != "No" {
		t.Fatalf("report header %v", m.Header)
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	var types []string
	for {
		p, err := mr.NextPart()
		if err != nil {
			break
		}
		types = append(types, strings.Split(p.Header.Get("Content-Type"), ";")[0])
	}
	if strings.Join(types, ",") != "text/plain,application/tlsrpt+gzip" {
		t.Fatalf("report parts %v", types)
	}
	// Sent once: a second send sends nothing.
	if out, _, code := h.apiCLI(key, "tlsrpt", "send", "--day", day); code != 0 || !strings.Contains(out, "0 report(s)") {
		t.Fatalf("second send: %s", out)
	}

	// Inbound: our own report, submitted to the reporting address.
	body, _ := json.Marshal(map[string]any{"from": "app@sender.test", "to": "tlsrpt@relay.e2e.test", "message": string(got.Data)})
	if r := h.do("POST", "/v1/messages/raw", key, body, nil); r.status != 202 {
		t.Fatalf("POST /v1/messages/raw: %s", r)
	}
	evs := h.relay.waitEvents("the tls_report event", func(evs []pipeline.Event) bool {
		return findEvent(evs, pipeline.EventTLSReport, "tlsrpt@relay.e2e.test") != nil
	})
	ev := findEvent(evs, pipeline.EventTLSReport, "tlsrpt@relay.e2e.test")
	if ev.Metadata["organization"] != "Relay E2E" || ev.Metadata["policy_domains"] != "example.test" || ev.Metadata["successful"] != "0" ||
		ev.Metadata["failed"] != "1" || ev.Source != "http" {
		t.Fatalf("tls_report event %+v", ev)
	}
	// The report message itself is in the events with source tlsrpt.
	found := false
	for _, e := range evs {
		found = found || e.Type == pipeline.EventReceived && e.Recipient == "tlsrpt@reports.test" && e.Source == "tlsrpt"
	}
	if !found {
		t.Fatalf("no received event with source tlsrpt for the report:\n%s", describeEvents(evs))
	}
	// Our own outgoing report is not a report sent to us: no tls_report
	// event for its way out to the rua.
	if ev := findEvent(evs, pipeline.EventTLSReport, "tlsrpt@reports.test"); ev != nil {
		t.Fatalf("the report we sent recorded as received: %+v", ev)
	}
}
