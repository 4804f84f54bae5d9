package tlsrpt

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/mail"
	"net/url"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/internal/dnsx"
)

// ParseTXT returns the rua URIs of a TLSRPT TXT record (RFC 8460 section
// 3: "v=TLSRPTv1; rua=mailto:a@example.com,https://r.example.com/x"),
// or an error when the record is not a TLSRPTv1 record or names no
// usable rua (only mailto: and https: are kept).
func ParseTXT(txt string) ([]string, error) {
	fields := strings.Split(txt, ";")
	if strings.TrimSpace(fields[0]) != "v=TLSRPTv1" {
		return nil, errors.New("tlsrpt TXT record: does not start with v=TLSRPTv1")
	}
	var out []string
	for _, f := range fields[1:] {
		k, v, _ := strings.Cut(strings.TrimSpace(f), "=")
		if strings.TrimSpace(k) != "rua" {
			continue
		}
		for _, u := range strings.Split(v, ",") {
			u = strings.TrimSpace(u)
			pu, err := url.Parse(u)
			if err != nil {
				continue
			}
			switch strings.ToLower(pu.Scheme) {
			case "mailto":
				if _, err := mail.ParseAddress(pu.Opaque); err == nil {
					out = append(out, u)
				}
			case "https":
				if pu.Host != "" {
					out = append(out, u)
				}
			}
		}
	}
	if len(out) == 0 {
		return nil, errors.New("tlsrpt TXT record: no mailto: or https: rua")
	}
	return out, nil
}

// LookupRUA reads the rua URIs of domain's _smtp._tls TXT record. No
// record (or several TLSRPTv1 records, section 3) is an error.
func LookupRUA(ctx context.Context, r dnsx.Resolver, domain string) ([]string, error) {
	res, err := r.LookupTXT(ctx, "_smtp._tls."+domain)
	if err != nil {
		return nil, fmt.Errorf("_smtp._tls.%s: %w", domain, err)
	}
	var recs []string
	for _, t := range res.Records {
		if strings.HasPrefix(t, "v=TLSRPTv1") {
			recs = append(recs, t)
		}
	}
	switch len(recs) {
	case 0:
		return nil, fmt.Errorf("_smtp._tls.%s: no v=TLSRPTv1 TXT record", domain)
	case 1:
		return ParseTXT(recs[0])
	}
	return nil, fmt.Errorf("_smtp._tls.%s: %d TLSRPTv1 TXT records", domain, len(recs))
}

// Gzip is the report's JSON, gzip-compressed (section 5.3).
func Gzip(rep *Report) ([]byte, error) {
	js, err := rep.Marshal(false)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := zw.Write(js); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// Filename is the report's file name (section 5.1):
// submitter!policy-domain!begin!end.json.gz, with the times in seconds
// since the epoch.
func Filename(submitter, domain string, rep *Report) string {
	return fmt.Sprintf("%s!%s!%d!%d.json.gz", submitter, domain, rep.DateRange.Start.Unix(), rep.DateRange.End.Unix())
}

// BuildMessage is the report as a message (section 5.3): a
// multipart/report; report-type="tlsrpt" with a text/plain part and the
// gzip report as an application/tlsrpt+gzip attachment, with the
// TLS-Report-Domain and TLS-Report-Submitter header fields, and
// "TLS-Required: No" (RFC 8689 section 5) so that the recipient
// domain's own failing MTA-STS or DANE policy does not hold its report
// back (RFC 8460 section 3). CRLF line
// endings; base64 wrapped at 76 columns.
func BuildMessage(from string, to []string, submitter, domain string, rep *Report, gz []byte, now time.Time) []byte {
	var rnd [12]byte
	_, _ = rand.Read(rnd[:])
	boundary := "tlsrpt-" + hex.EncodeToString(rnd[:])
	var b strings.Builder
	h := func(k, v string) { b.WriteString(k + ": " + v + "\r\n") }
	h("From", from)
	h("To", strings.Join(to, ", "))
	h("Subject", mime.QEncoding.Encode("utf-8", fmt.Sprintf("Report Domain: %s Submitter: %s Report-ID: <%s>", domain, submitter, rep.ReportID)))
	h("Date", now.UTC().Format(time.RFC1123Z))
	h("Message-ID", "<"+hex.EncodeToString(rnd[:])+"."+rep.DateRange.Start.Format("20060102")+"@"+submitter+">")
	h("TLS-Report-Domain", domain)
	h("TLS-Report-Submitter", submitter)
	h("Auto-Submitted", "auto-generated")
	// Section 3: "Sending MTAs MUST deliver reports despite any
	// TLS-related failures": the domain whose TLS is broken is the one
	// that needs the report. RFC 8689 section 5's field asks that the
	// recipient's MTA-STS and DANE policies not block it.
	h("TLS-Required", "No")
	h("MIME-Version", "1.0")
	h("Content-Type", `multipart/report; report-type="tlsrpt"; boundary="`+boundary+`"`)
	b.WriteString("\r\n")
	b.WriteString("--" + boundary + "\r\n")
	b.WriteString("Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n")
	t := rep.Totals()
	fmt.Fprintf(&b, "This is an aggregate TLS report from %s for %s, %s to %s:\r\n%d successful and %d failed sessions.\r\n\r\n",
		submitter, domain, rep.DateRange.Start.Format(time.RFC3339), rep.DateRange.End.Format(time.RFC3339), t.Successful, t.Failure)
	b.WriteString("--" + boundary + "\r\n")
	name := Filename(submitter, domain, rep)
	b.WriteString("Content-Type: " + MediaType + "; name=\"" + name + "\"\r\n")
	b.WriteString("Content-Disposition: attachment; filename=\"" + name + "\"\r\n")
	b.WriteString("Content-Transfer-Encoding: base64\r\n\r\n")
	enc := base64.StdEncoding.EncodeToString(gz)
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n")
	b.WriteString("--" + boundary + "--\r\n")
	return []byte(b.String())
}

// Submit queues a message through the relay (the server wires it to a
// relay session whose source is "tlsrpt"); the queue then delivers and
// retries it like any message.
type Submit func(ctx context.Context, from string, to []string, msg []byte) error

// Sender delivers reports to their rua. Set its fields before use; it is
// safe for concurrent use.
type Sender struct {
	Resolver dnsx.Resolver
	// Client POSTs to https: rua; nil means one with a 30-second
	// timeout and no redirects followed.
	Client *http.Client
	// Submit queues mailto: reports; nil means mailto: rua are skipped
	// (logged).
	Submit Submit
	// From is the report messages' sender (header and envelope).
	From string
	// Submitter is this reporter's name (TLS-Report-Submitter, file
	// names): the node's host name.
	Submitter string
	// Retries is how many times a failed POST is retried (default 2),
	// RetryDelay the wait before the first retry, doubled each time
	// (default 1 minute).
	Retries    int
	RetryDelay time.Duration
	Logger     *slog.Logger
}

// Send delivers rep about domain to every rua of domain's TLSRPT record.
// It returns nil when at least one rua took it (RFC 8460 section 5: a
// reporter tries each), else the joined errors.
func (s *Sender) Send(ctx context.Context, domain string, rep *Report) error {
	ruas, err := LookupRUA(ctx, s.Resolver, domain)
	if err != nil {
		return err
	}
	return s.SendTo(ctx, domain, rep, ruas)
}

// SendTo delivers rep to the given rua URIs (see Send).
func (s *Sender) SendTo(ctx context.Context, domain string, rep *Report, ruas []string) error {
	gz, err := Gzip(rep)
	if err != nil {
		return err
	}
	log := s.Logger
	if log == nil {
		log = slog.Default()
	}
	var errs []error
	ok := false
	var mailto []string
	for _, u := range ruas {
		pu, err := url.Parse(u)
		if err != nil {
			continue
		}
		switch strings.ToLower(pu.Scheme) {
		case "https":
			if err := s.post(ctx, u, gz); err != nil {
				errs = append(errs, err)
				log.Warn("tls report POST failed", "domain", domain, "rua", u, "err", err)
				continue
			}
			log.Info("tls report posted", "domain", domain, "rua", u, "report_id", rep.ReportID)
			ok = true
		case "mailto":
			mailto = append(mailto, pu.Opaque)
		}
	}
	if len(mailto) > 0 {
		switch {
		case s.Submit == nil:
			errs = append(errs, errors.New("mailto: rua, but no relay to send through"))
		default:
			msg := BuildMessage(s.From, mailto, s.Submitter, domain, rep, gz, time.Now())
			if err := s.Submit(ctx, s.From, mailto, msg); err != nil {
				errs = append(errs, fmt.Errorf("queueing the report for %s: %w", strings.Join(mailto, ", "), err))
				log.Warn("tls report not queued", "domain", domain, "to", mailto, "err", err)
			} else {
				log.Info("tls report queued", "domain", domain, "to", mailto, "report_id", rep.ReportID)
				ok = true
			}
		}
	}
	if ok {
		return nil
	}
	return errors.Join(errs...)
}

func (s *Sender) client() *http.Client {
	if s.Client != nil {
		return s.Client
	}
	return &http.Client{Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// post POSTs gz to u (section 5.4), retrying a failure (a network error,
// a status other than 2xx) Retries times with a doubling delay.
func (s *Sender) post(ctx context.Context, u string, gz []byte) error {
	delay := cmp.Or(s.RetryDelay, time.Minute)
	retries := s.Retries
	if retries == 0 {
		retries = 2
	}
	var err error
	for i := 0; ; i++ {
		if err = s.postOnce(ctx, u, gz); err == nil || i >= retries {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
		delay *= 2
	}
}

func (s *Sender) postOnce(ctx context.Context, u string, gz []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(gz))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", MediaType)
	resp, err := s.client().Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("POST %s: HTTP status %d", u, resp.StatusCode)
	}
	return nil
}
