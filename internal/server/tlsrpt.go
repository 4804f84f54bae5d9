package server

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/relay"
	"github.com/sluice-mta/sluice/internal/tlsrpt"
	"github.com/sluice-mta/sluice/pipeline"
)

// SourceTLSRPT is the source of the report messages Sluice sends
// (docs/tls-reporting.md).
const SourceTLSRPT = tlsrpt.Source

// tlsReporting is the node's TLS reporting (RFC 8460): the recorder the
// Dialer feeds, the daily reporter, and the inbound recogniser.
type tlsReporting struct {
	cfg      *config.TLSReporting
	rec      *tlsrpt.Recorder // nil: not counting (section absent or enabled = false)
	reporter *tlsrpt.Reporter
	inbound  *tlsrpt.Inbound
	stop     func()
}

// newTLSReporting builds the TLS reporting of cfg on the opened spool
// and hooks it into d. Inbound reports are recognised by content type
// even without sluice.tls_reporting.
func (s *Server) newTLSReporting(cfg *config.Config, d *delivery.Dialer) (*tlsReporting, error) {
	t := &tlsReporting{cfg: cfg.TLSReporting, inbound: &tlsrpt.Inbound{}}
	c := cfg.TLSReporting
	if c == nil {
		return t, nil
	}
	for _, a := range c.InboundAddresses {
		t.inbound.Addresses = append(t.inbound.Addresses, strings.ToLower(a))
	}
	if !c.Enabled {
		return t, nil
	}
	t.rec = tlsrpt.NewRecorder(tlsrpt.Options{Store: s.sp, Logger: s.log.With("component", "tlsrpt"),
		MaxPolicies: c.MaxPolicies, MaxDetails: c.MaxDetails, KeepDays: c.KeepDays})
	if err := t.rec.Load(); err != nil {
		return nil, err
	}
	d.TLSReport = t.rec.Record
	host := d.Hostname
	from := c.From
	if from == "" {
		from = "tlsrpt-noreply@" + host
	}
	t.reporter = &tlsrpt.Reporter{Recorder: t.rec, SendAt: c.SendAt, Logger: s.log.With("component", "tlsrpt"),
		Meta: tlsrpt.Meta{Organization: c.Organization, Contact: c.Contact, Hostname: host},
		Sender: &tlsrpt.Sender{Resolver: s.res, From: from, Submitter: host, Retries: c.Retries,
			Client: &http.Client{Timeout: c.HTTPTimeout,
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
			Submit: s.submitReport, Logger: s.log.With("component", "tlsrpt")}}
	return t, nil
}

// start runs the flusher and the daily reporter.
func (t *tlsReporting) start() {
	if t.rec == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { t.rec.Run(ctx, t.cfg.FlushInterval); done <- struct{}{} }()
	go func() { t.reporter.Run(ctx); done <- struct{}{} }()
	t.stop = func() { cancel(); <-done; <-done }
}

// submitReport queues a report message through the relay, as the
// internal identity "tlsrpt" (source tlsrpt): the pipeline's on_mail,
// on_rcpt, on_message and on_route stages see it like any message.
func (s *Server) submitReport(ctx context.Context, from string, to []string, msg []byte) error {
	conn := &pipeline.Conn{Source: SourceTLSRPT, ServerName: s.cfg.Hostname,
		Identity: &pipeline.Identity{Name: "tlsrpt", Method: "internal"}}
	sess := s.relay.NewSession(conn)
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	t, err := sess.Begin(ctx, from, nil, map[string]string{"tlsrpt": "report"})
	if err != nil {
		return err
	}
	defer t.Abort()
	for _, a := range to {
		if _, err := t.Rcpt(ctx, a); err != nil {
			return err
		}
	}
	m, err := pipeline.ParseMessage(t.T, msg)
	if err != nil {
		return err
	}
	_, err = t.Commit(ctx, m, relay.CommitOptions{})
	return err
}

// tlsReportsAPI serves the recorder to the HTTP API
// (httpapi.TLSReports).
type tlsReportsAPI struct{ t *tlsReporting }

func (a tlsReportsAPI) Domains(day string) []string  { return a.t.rec.Domains(day) }
func (a tlsReportsAPI) Sent(day, domain string) bool { return a.t.rec.Sent(day, domain) }
func (a tlsReportsAPI) Send(ctx context.Context, day string) (int, error) {
	return a.t.reporter.SendDay(ctx, day)
}
func (a tlsReportsAPI) Report(day, domain string) (*tlsrpt.Report, error) {
	return a.t.rec.Report(day, domain, a.t.reporter.Meta)
}
