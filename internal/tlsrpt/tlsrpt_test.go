package tlsrpt_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/internal/tlsrpt"
	"github.com/sluice-mta/sluice/internal/tlsrpt/tlsrpttest"
	"github.com/sluice-mta/sluice/pipeline"
)

var day = time.Date(2026, 11, 29, 15, 4, 5, 0, time.UTC)

var meta = tlsrpt.Meta{Organization: "Sluice Test", Contact: "mailto:postmaster@sluice.test", Hostname: "mx.sluice.test"}

// record counts a few sessions for example.test on day.
func record(r *tlsrpt.Recorder) {
	pol := []string{"version: STSv1", "mode: enforce", "mx: mx.example.test", "max_age: 86400"}
	for range 5 {
		r.Record(tlsrpt.Session{Time: day, Domain: "Example.TEST.", Type: tlsrpt.PolicySTS, Policy: pol,
			PolicyMX: []string{"mx.example.test"}, MXHost: "mx.example.test", ReceivingIP: "192.0.2.1", SendingIP: "198.51.100.1"})
	}
	for range 2 {
		r.Record(tlsrpt.Session{Time: day, Domain: "example.test", Type: tlsrpt.PolicySTS, Policy: pol,
			MXHost: "mx.example.test", ReceivingIP: "192.0.2.1", SendingIP: "198.51.100.1",
			Result: tlsrpt.ResultCertExpired, Detail: "TLS handshake failed"})
	}
	r.Record(tlsrpt.Session{Time: day, Domain: "example.test", Type: tlsrpt.PolicyNotFound, MXHost: "mx.example.test"})
}

func openSpoolB(b *testing.B) (*spool.Spool, error) {
	return spool.Open(b.TempDir(), spool.Options{})
}

func openSpool(t *testing.T, dir string) *spool.Spool {
	t.Helper()
	sp, err := spool.Open(dir, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

// TestRecorderSurvivesRestart flushes counts to a real spool, reopens
// it and gets the same report.
func TestRecorderSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	sp := openSpool(t, dir)
	r := tlsrpt.NewRecorder(tlsrpt.Options{Store: sp, Now: func() time.Time { return day }})
	record(r)
	before, err := r.Report("2026-11-29", "example.test", meta)
	if err != nil || before == nil {
		t.Fatalf("Report = %v, %v", before, err)
	}
	r.MarkSent("2026-11-29", "example.test")
	if err := r.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
	sp = openSpool(t, dir)
	defer sp.Close()
	r2 := tlsrpt.NewRecorder(tlsrpt.Options{Store: sp, Now: func() time.Time { return day }})
	if err := r2.Load(); err != nil {
		t.Fatal(err)
	}
	after, err := r2.Report("2026-11-29", "example.test", meta)
	if err != nil || after == nil {
		t.Fatalf("Report after restart = %v, %v", after, err)
	}
	a, _ := before.Marshal(false)
	b, _ := after.Marshal(false)
	if !bytes.Equal(a, b) {
		t.Fatalf("report changed across a restart:\n%s\n%s", a, b)
	}
	tlsrpttest.Validate(t, b)
	if !r2.Sent("2026-11-29", "example.test") {
		t.Fatal("sent mark lost across a restart")
	}
	if after.Policies[0].Summary != (tlsrpt.Summary{Successful: 5, Failure: 2}) || after.Policies[1].Policy.Type != tlsrpt.PolicyNotFound {
		t.Fatalf("report %s", b)
	}

	// A week later the rows are pruned at the next flush.
	r3 := tlsrpt.NewRecorder(tlsrpt.Options{Store: sp, Now: func() time.Time { return day.AddDate(0, 0, 8) }})
	if err := r3.Load(); err != nil {
		t.Fatal(err)
	}
	if err := r3.Flush(); err != nil {
		t.Fatal(err)
	}
	if rows, err := sp.TLSReports(); err != nil || len(rows) != 0 {
		t.Fatalf("rows after pruning: %d, %v", len(rows), err)
	}
}

// TestRecorderBounds checks MaxPolicies and MaxDetails.
func TestRecorderBounds(t *testing.T) {
	r := tlsrpt.NewRecorder(tlsrpt.Options{MaxPolicies: 2, MaxDetails: 3})
	for _, d := range []string{"a.test", "b.test", "c.test"} {
		r.Record(tlsrpt.Session{Time: day, Domain: d, Type: tlsrpt.PolicyNotFound})
	}
	if r.Dropped() != 1 || len(r.Domains("2026-11-29")) != 2 {
		t.Fatalf("Dropped = %d, Domains = %v", r.Dropped(), r.Domains("2026-11-29"))
	}
	for i := range 10 {
		r.Record(tlsrpt.Session{Time: day, Domain: "a.test", Type: tlsrpt.PolicyNotFound,
			ReceivingIP: "192.0.2." + string(rune('1'+i)), Result: tlsrpt.ResultSTARTTLSNotSupported})
	}
	rep, _ := r.Report("2026-11-29", "a.test", meta)
	if p := rep.Policies[0]; len(p.FailureDetails) != 3 || p.Summary.Failure != 10 {
		t.Fatalf("policy %+v: want 3 details, 10 failures", p)
	}
}

// TestSendHTTPSAndMailto sends a report to both rua kinds of a domain's
// _smtp._tls record: an HTTPS server on loopback gets a POST of the
// gzip report (the first try answered 503 and is retried), and a
// loopback SMTP sink gets the multipart/report message.
func TestSendHTTPSAndMailto(t *testing.T) {
	var (
		mu    sync.Mutex
		posts [][]byte
		tries int
	)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		tries++
		if tries == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/tlsrpt+gzip" || r.URL.Path != "/tlsrpt" {
			t.Errorf("request %s %s %q", r.Method, r.URL, r.Header.Get("Content-Type"))
		}
		b, _ := io.ReadAll(r.Body)
		posts = append(posts, b)
	}))
	defer srv.Close()
	sink := testutil.StartSink(t, testutil.SinkOptions{})

	dns := dnstest.NewServer(t)
	res, err := dnsx.New(dnsx.Options{Server: dns.Addr(), Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	dns.AddTXT("_smtp._tls.example.test", "v=TLSRPTv1; rua=mailto:tlsrpt@example.test,"+srv.URL+"/tlsrpt")

	r := tlsrpt.NewRecorder(tlsrpt.Options{Now: func() time.Time { return day }})
	record(r)
	snd := &tlsrpt.Sender{Resolver: res, Client: srv.Client(), From: "tlsrpt-noreply@sluice.test", Submitter: "mx.sluice.test",
		RetryDelay: time.Millisecond,
		Submit: func(ctx context.Context, from string, to []string, msg []byte) error {
			c, err := smtp.Dial(sink.Addr)
			if err != nil {
				return err
			}
			defer c.Close()
			if err := c.SendMail(from, to, bytes.NewReader(msg)); err != nil {
				return err
			}
			return c.Quit()
		}}
	p := &tlsrpt.Reporter{Recorder: r, Sender: snd, Meta: meta}
	n, err := p.SendDay(context.Background(), "2026-11-29")
	if err != nil || n != 1 {
		t.Fatalf("SendDay = %d, %v", n, err)
	}
	if n, err := p.SendDay(context.Background(), "2026-11-29"); err != nil || n != 0 {
		t.Fatalf("second SendDay = %d, %v; want nothing sent again", n, err)
	}

	mu.Lock()
	if len(posts) != 1 || tries != 2 {
		t.Fatalf("%d POSTs in %d tries, want 1 in 2", len(posts), tries)
	}
	js := gunzip(t, posts[0])
	mu.Unlock()
	tlsrpttest.Validate(t, js)

	msgs := sink.Messages()
	if len(msgs) != 1 || msgs[0].From != "tlsrpt-noreply@sluice.test" || len(msgs[0].Rcpts) != 1 || msgs[0].Rcpts[0] != "tlsrpt@example.test" {
		t.Fatalf("sink got %+v", msgs)
	}
	m, err := mail.ReadMessage(bytes.NewReader(msgs[0].Data))
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get("TLS-Report-Domain") != "example.test" || m.Header.Get("TLS-Report-Submitter") != "mx.sluice.test" {
		t.Errorf("header %v", m.Header)
	}
	// RFC 8460 section 3: a report is delivered despite TLS failures,
	// so it asks that the domain's TLS policies not block it.
	if m.Header.Get("TLS-Required") != "No" {
		t.Errorf("TLS-Required %q, want No", m.Header.Get("TLS-Required"))
	}
	if !strings.Contains(m.Header.Get("Subject"), "Report Domain: example.test") {
		t.Errorf("Subject %q", m.Header.Get("Subject"))
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "tlsrpt" {
		t.Fatalf("Content-Type %q", m.Header.Get("Content-Type"))
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	first, err := mr.NextPart()
	if err != nil || !strings.HasPrefix(first.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("first part %v, %v", first, err)
	}
	att, err := mr.NextPart()
	if err != nil {
		t.Fatal(err)
	}
	if mt, _, _ := mime.ParseMediaType(att.Header.Get("Content-Type")); mt != "application/tlsrpt+gzip" {
		t.Fatalf("attachment type %q", att.Header.Get("Content-Type"))
	}
	// RFC 8460 section 5.1: submitter!domain!begin!end.json.gz.
	if fn := att.FileName(); !regexp.MustCompile(`^mx\.sluice\.test!example\.test!1795910400!1795996799\.json\.gz$`).MatchString(fn) {
		t.Errorf("file name %q", fn)
	}
	if _, err := mr.NextPart(); err != io.EOF {
		t.Errorf("more parts than two: %v", err)
	}

	// The same message, received: the report comes back, as an event
	// that validates against the event schema.
	pm, err := pipeline.ParseMessage(&pipeline.Txn{ID: "01JDEF0123456789ABCDEFGHJK", Sender: "tlsrpt-noreply@sluice.test",
		Conn: &pipeline.Conn{Source: pipeline.SourceSMTP}, Recipients: []*pipeline.Recipient{{Address: "tlsrpt@example.test"}}}, msgs[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	ev := (&tlsrpt.Inbound{}).Inspect(pm)
	if ev == nil {
		t.Fatal("Inspect found no report in our own report message")
	}
	if ev.Type != "tls_report" || ev.Metadata["successful"] != "6" || ev.Metadata["failed"] != "2" ||
		ev.Metadata["organization"] != "Sluice Test" || ev.Metadata["policy_domains"] != "example.test" || ev.Recipient != "tlsrpt@example.test" {
		t.Fatalf("event %+v", ev)
	}
	// The same message on its way out (our own report, queued through
	// the relay as source tlsrpt) is not a report sent to us.
	pm.Conn = &pipeline.Conn{Source: tlsrpt.Source}
	if ev := (&tlsrpt.Inbound{}).Inspect(pm); ev != nil {
		t.Fatalf("our own outgoing report recorded as a received one: %+v", ev)
	}
	// The spool fills these when it records the event.
	ev.Schema, ev.EventID, ev.Time, ev.Node, ev.Tags = pipeline.EventSchema, "01JDEF0123456789ABCDEFGHJM", day, "n1", []string{}
	testutil.ValidateEventValue(t, ev)
}

func gunzip(t *testing.T, b []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestInbound checks which messages Inspect treats as reports.
func TestInbound(t *testing.T) {
	js := `{"organization-name":"Company-X","date-range":{"start-datetime":"2016-04-01T00:00:00Z","end-datetime":"2016-04-01T23:59:59Z"},` +
		`"contact-info":"sts-reporting@company-x.example","report-id":"5065427c-23d3-47ca-b6e0-946ea0e8c4be",` +
		`"policies":[{"policy":{"policy-type":"sts","policy-string":["version: STSv1","mode: testing","mx: *.mail.company-y.example","max_age: 86400"],` +
		`"policy-domain":"company-y.example","mx-host":["*.mail.company-y.example"]},` +
		`"summary":{"total-successful-session-count":5326,"total-failure-session-count":303},` +
		`"failure-details":[{"result-type":"certificate-expired","sending-mta-ip":"2001:db8:abcd:0012::1","receiving-mx-hostname":"mx1.mail.company-y.example","failed-session-count":100}]}]}`
	// The RFC's own example validates against our schema.
	tlsrpttest.Validate(t, []byte(js))
	msg := func(rcpt, ct, body string) *pipeline.Message {
		data := "From: r@x.example\r\nContent-Type: " + ct + "\r\n\r\n" + body
		m, err := pipeline.ParseMessage(&pipeline.Txn{ID: "01T", Conn: &pipeline.Conn{},
			Recipients: []*pipeline.Recipient{{Address: rcpt}}}, []byte(data))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	// Without inbound addresses, the content type decides.
	in := &tlsrpt.Inbound{}
	if ev := in.Inspect(msg("x@us.test", "application/tlsrpt+json", js)); ev == nil || ev.Metadata["failed"] != "303" || ev.Metadata["report_id"] != "5065427c-23d3-47ca-b6e0-946ea0e8c4be" {
		t.Fatalf("a bare application/tlsrpt+json message: %+v", ev)
	}
	if ev := in.Inspect(msg("x@us.test", "text/plain", js)); ev != nil {
		t.Fatalf("text/plain taken as a report: %+v", ev)
	}
	// With inbound addresses, only mail to them: a report relayed to
	// someone else (a customer's own report on its way out) is not ours.
	if ev := (&tlsrpt.Inbound{Addresses: []string{"tlsrpt@us.test"}}).Inspect(msg("tlsrpt@them.test", "application/tlsrpt+json", js)); ev != nil {
		t.Fatalf("a report addressed elsewhere taken for ours: %+v", ev)
	}
	in = &tlsrpt.Inbound{Addresses: []string{"tlsrpt@us.test"}}
	if ev := in.Inspect(msg("tlsrpt@us.test", "application/tlsrpt+json", js)); ev == nil {
		t.Fatal("a report to the inbound address not taken")
	}
	neg := `{"organization-name":"x","report-id":"y","date-range":{"start-datetime":"2026-01-01T00:00:00Z","end-datetime":"2026-01-01T23:59:59Z"},` +
		`"policies":[{"summary":{"total-successful-session-count":1,"total-failure-session-count":-5}}]}`
	if ev := in.Inspect(msg("tlsrpt@us.test", "application/tlsrpt+json", neg)); ev != nil {
		t.Fatalf("a report with a negative count accepted: %+v", ev)
	}
	// Counts near the int64 limit saturate rather than wrap negative.
	big := `{"organization-name":"x","report-id":"y","date-range":{"start-datetime":"2026-01-01T00:00:00Z","end-datetime":"2026-01-01T23:59:59Z"},` +
		`"policies":[{"summary":{"total-successful-session-count":9223372036854775807}},{"summary":{"total-successful-session-count":9223372036854775807}}]}`
	if ev := in.Inspect(msg("tlsrpt@us.test", "application/tlsrpt+json", big)); ev == nil || ev.Metadata["successful"] != "9223372036854775807" {
		t.Fatalf("a report with huge counts: %+v", ev)
	}
	if ev := in.Inspect(msg("tlsrpt@us.test", "application/tlsrpt+json", `{"organization-name":"x"}`)); ev != nil {
		t.Fatalf("a report without report-id accepted: %+v", ev)
	}
	// Addressed to the reporting address: a multipart/mixed with a
	// .json.gz attachment is parsed too.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(js))
	zw.Close()
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	pw, _ := mw.CreatePart(map[string][]string{"Content-Type": {"application/gzip"},
		"Content-Disposition": {`attachment; filename="x!company-y.example!1!2.json.gz"`}})
	pw.Write(gz.Bytes())
	mw.Close()
	if ev := in.Inspect(msg("TLSRPT@us.test", "multipart/mixed; boundary="+mw.Boundary(), b.String())); ev == nil || ev.Metadata["successful"] != "5326" {
		t.Fatalf("gzip attachment to the reporting address: %+v", ev)
	}
	var rep tlsrpt.Report
	if err := json.Unmarshal([]byte(js), &rep); err != nil || rep.Policies[0].FailureDetails[0].FailedSessionCount != 100 {
		t.Fatalf("RFC example: %v %+v", err, rep)
	}
}

// TestParseTXT checks rua parsing.
func TestParseTXT(t *testing.T) {
	for txt, want := range map[string]string{
		"v=TLSRPTv1; rua=mailto:a@b.example":                           "mailto:a@b.example",
		"v=TLSRPTv1;rua=https://r.example/x, mailto:c@d.example":       "https://r.example/x mailto:c@d.example",
		"v=TLSRPTv1; rua=http://insecure.example/, mailto:c@d.example": "mailto:c@d.example",
		"v=TLSRPTv1; rua=ftp://x.example/":                             "",
		"v=STSv1; id=1":                                                "",
	} {
		got, err := tlsrpt.ParseTXT(txt)
		if strings.Join(got, " ") != want || (err != nil) != (want == "") {
			t.Errorf("ParseTXT(%q) = %q, %v; want %q", txt, got, err, want)
		}
	}
}

// TestReporterRun starts the daily schedule at 01:30 UTC (past send_at):
// the previous day's report goes out at once, to an https: rua.
func TestReporterRun(t *testing.T) {
	got := make(chan []byte, 1)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- b
	}))
	defer srv.Close()
	dns := dnstest.NewServer(t)
	res, err := dnsx.New(dnsx.Options{Server: dns.Addr(), Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	dns.AddTXT("_smtp._tls.example.test", "v=TLSRPTv1; rua="+srv.URL+"/r")
	r := tlsrpt.NewRecorder(tlsrpt.Options{})
	record(r)
	p := &tlsrpt.Reporter{Recorder: r, Meta: meta, SendAt: time.Hour,
		Now:    func() time.Time { return time.Date(2026, 11, 30, 1, 30, 0, 0, time.UTC) },
		Sender: &tlsrpt.Sender{Resolver: res, Client: srv.Client(), Submitter: "mx.sluice.test"}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	js := gunzip(t, <-got)
	// The mark follows the POST's answer.
	for deadline := time.Now().Add(10 * time.Second); !r.Sent("2026-11-29", "example.test") && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	tlsrpttest.Validate(t, js)
	var rep tlsrpt.Report
	if err := json.Unmarshal(js, &rep); err != nil || rep.DateRange.Start != time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC) {
		t.Fatalf("report %s (%v)", js, err)
	}
	if !r.Sent("2026-11-29", "example.test") {
		t.Fatal("not marked sent")
	}
}

// TestResultOf maps verification errors (as crypto/tls wraps them) to
// result types.
func TestResultOf(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("handshake: %w", &tls.CertificateVerificationError{Err: err}) }
	for _, c := range []struct {
		err       error
		want, sts string
	}{
		{wrap(x509.HostnameError{Host: "mx.test"}), tlsrpt.ResultCertHostMismatch, tlsrpt.ResultSTSWebPKIInvalid},
		{wrap(x509.CertificateInvalidError{Reason: x509.Expired}), tlsrpt.ResultCertExpired, tlsrpt.ResultSTSWebPKIInvalid},
		{wrap(x509.UnknownAuthorityError{}), tlsrpt.ResultCertNotTrusted, tlsrpt.ResultSTSWebPKIInvalid},
		{wrap(x509.CertificateInvalidError{Reason: x509.NotAuthorizedToSign}), tlsrpt.ResultValidationFailure, tlsrpt.ResultSTSWebPKIInvalid},
		{errors.New("mta-sts policy: version \"\", want STSv1"), tlsrpt.ResultValidationFailure, tlsrpt.ResultSTSPolicyInvalid},
		{errors.New("mta-sts policy fetch: https://mta-sts.x.test/.well-known/mta-sts.txt: HTTP status 404"), tlsrpt.ResultValidationFailure, tlsrpt.ResultSTSPolicyFetchError},
	} {
		if got := tlsrpt.ResultOf(c.err); got != c.want {
			t.Errorf("ResultOf(%v) = %s, want %s", c.err, got, c.want)
		}
		if got := tlsrpt.FetchResult(c.err); got != c.sts {
			t.Errorf("FetchResult(%v) = %s, want %s", c.err, got, c.sts)
		}
	}
}
