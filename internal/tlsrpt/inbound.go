package tlsrpt

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

// MaxReport bounds a received report once decompressed, in bytes: a
// larger one is refused as not a report (a gzip bomb guard).
const MaxReport = 16 << 20

// maxParts bounds the MIME parts looked at in a received message.
const maxParts = 32

// ErrNoReport means the message carries no application/tlsrpt+gzip or
// application/tlsrpt+json part.
var ErrNoReport = errors.New("tlsrpt: no application/tlsrpt+gzip or application/tlsrpt+json part")

// ParseMessage finds the report in a received message (header fields as
// contentType and transfer encoding, then the body): the message itself
// or, in a multipart (multipart/report; report-type=tlsrpt as section
// 5.3 sends, or any multipart), the first part whose type is
// application/tlsrpt+gzip or application/tlsrpt+json (an
// application/gzip or application/octet-stream part whose file name
// ends .json.gz is accepted too). The report must be valid JSON with an
// organization-name, a report-id and a date-range.
func ParseMessage(contentType, encoding string, body []byte) (*Report, error) {
	return parsePart(contentType, encoding, "", body, 0)
}

func parsePart(ct, cte, filename string, body []byte, depth int) (*Report, error) {
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		mt = "text/plain"
	}
	switch {
	case strings.HasPrefix(mt, "multipart/"):
		if depth > 2 {
			return nil, ErrNoReport
		}
		mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
		for i := 0; i < maxParts; i++ {
			p, err := mr.NextRawPart()
			if err != nil {
				break
			}
			pb, err := io.ReadAll(io.LimitReader(p, MaxReport+1))
			if err != nil {
				return nil, fmt.Errorf("tlsrpt: reading a MIME part: %w", err)
			}
			fn := p.FileName()
			if fn == "" {
				_, cp, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
				fn = cp["name"]
			}
			rep, err := parsePart(p.Header.Get("Content-Type"), p.Header.Get("Content-Transfer-Encoding"), fn, pb, depth+1)
			if !errors.Is(err, ErrNoReport) {
				return rep, err
			}
		}
		return nil, ErrNoReport
	case mt == MediaType, mt == MediaTypeJSON:
	case (mt == "application/gzip" || mt == "application/octet-stream") && strings.HasSuffix(strings.ToLower(filename), ".json.gz"):
		mt = MediaType
	default:
		return nil, ErrNoReport
	}
	raw, err := decode(cte, body)
	if err != nil {
		return nil, err
	}
	if mt == MediaType {
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("tlsrpt: report is not gzip: %w", err)
		}
		raw, err = io.ReadAll(io.LimitReader(zr, MaxReport+1))
		if err != nil {
			return nil, fmt.Errorf("tlsrpt: report is not gzip: %w", err)
		}
	}
	if len(raw) > MaxReport {
		return nil, fmt.Errorf("tlsrpt: report larger than %d bytes", MaxReport)
	}
	return ParseJSON(raw)
}

// ParseJSON parses a report's JSON (section 4.4). It checks the fields
// an event needs: organization-name, report-id and date-range.
func ParseJSON(js []byte) (*Report, error) {
	var rep Report
	if err := json.Unmarshal(js, &rep); err != nil {
		return nil, fmt.Errorf("tlsrpt: report JSON: %w", err)
	}
	switch {
	case rep.OrganizationName == "":
		return nil, errors.New("tlsrpt: report has no organization-name")
	case rep.ReportID == "":
		return nil, errors.New("tlsrpt: report has no report-id")
	case rep.DateRange.Start.IsZero() || rep.DateRange.End.IsZero():
		return nil, errors.New("tlsrpt: report has no date-range")
	}
	for _, p := range rep.Policies {
		if p.Summary.Successful < 0 || p.Summary.Failure < 0 {
			return nil, errors.New("tlsrpt: report has a negative session count")
		}
	}
	return &rep, nil
}

func decode(cte string, b []byte) ([]byte, error) {
	switch strings.ToLower(strings.TrimSpace(cte)) {
	case "base64":
		out, err := io.ReadAll(io.LimitReader(base64.NewDecoder(base64.StdEncoding, newlineStripper(b)), MaxReport+1))
		if err != nil {
			return nil, fmt.Errorf("tlsrpt: bad base64: %w", err)
		}
		return out, nil
	case "quoted-printable":
		return io.ReadAll(io.LimitReader(quotedprintable.NewReader(bytes.NewReader(b)), MaxReport+1))
	}
	return b, nil
}

func newlineStripper(b []byte) io.Reader {
	return strings.NewReader(strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == ' ' || r == '\t' {
			return -1
		}
		return r
	}, string(b)))
}

// Source is the pipeline source of the report messages this node sends
// itself (pipeline.Conn.Source): Inspect never takes them for reports
// sent to us.
const Source = "tlsrpt"

// Inbound recognises reports sent to this node (Inspect).
type Inbound struct {
	// Addresses, when not empty, are the recipients whose mail is parsed
	// as a report whatever its type (case-insensitive); mail to other
	// recipients is never taken for a report (a relay passes other
	// parties' reports on, and those are not about our domains). When
	// empty, mail is parsed when its top-level type says it is a report
	// (multipart/report; report-type=tlsrpt, application/tlsrpt+gzip or
	// +json), whoever it is addressed to.
	Addresses []string
	Now       func() time.Time
}

// Inspect returns the tls_report event for msg when it carries a
// report, else nil. It is cheap for other mail (a header look-up and an
// address comparison). The event's metadata: organization, report_id,
// contact, policy_domains (comma-separated), start and end (RFC 3339),
// successful and failed (session counts, decimal); recipient is the
// first recipient.
func (in *Inbound) Inspect(msg *pipeline.Message) *pipeline.Event {
	// Our own outgoing reports (to other domains' rua) pass through the
	// relay too: they are not reports about our domains.
	if msg.Conn != nil && msg.Conn.Source == Source {
		return nil
	}
	ct := msg.Header.Get("Content-Type")
	// Most mail is neither addressed to us nor typed as a report: two
	// cheap checks before any parsing.
	if len(in.Addresses) > 0 {
		if !in.addressed(msg) {
			return nil
		}
	} else if !containsFold(ct, "tlsrpt") || !looksLikeReport(ct) {
		return nil
	}
	rep, err := ParseMessage(ct, msg.Header.Get("Content-Transfer-Encoding"), msg.Body)
	if err != nil {
		return nil
	}
	var doms []string
	for _, p := range rep.Policies {
		if p.Policy.Domain != "" && !strings.Contains(","+strings.Join(doms, ",")+",", ","+p.Policy.Domain+",") {
			doms = append(doms, p.Policy.Domain)
		}
	}
	t := rep.Totals()
	ev := &pipeline.Event{Type: pipeline.EventTLSReport, MessageID: msg.ID, Sender: msg.Sender, Source: msg.Conn.Source,
		Tenant: msg.Conn.Tenant(), Tags: msg.Tags,
		Metadata: map[string]string{
			"organization":   rep.OrganizationName,
			"report_id":      rep.ReportID,
			"contact":        rep.ContactInfo,
			"policy_domains": strings.Join(doms, ","),
			"start":          rep.DateRange.Start.UTC().Format(time.RFC3339),
			"end":            rep.DateRange.End.UTC().Format(time.RFC3339),
			"successful":     strconv.FormatInt(t.Successful, 10),
			"failed":         strconv.FormatInt(t.Failure, 10),
		}}
	if len(msg.Recipients) > 0 {
		ev.Recipient = msg.Recipients[0].Address
	}
	return ev
}

func (in *Inbound) addressed(msg *pipeline.Message) bool {
	if len(in.Addresses) == 0 {
		return false
	}
	for _, r := range msg.Recipients {
		for _, a := range in.Addresses {
			if strings.EqualFold(r.Address, a) {
				return true
			}
		}
	}
	return false
}

func looksLikeReport(ct string) bool {
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == MediaType || mt == MediaTypeJSON || mt == "multipart/report" && strings.EqualFold(params["report-type"], "tlsrpt")
}

// containsFold reports whether s contains sub (ASCII, lower case) in
// any case.
func containsFold(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(sub)], sub) {
			return true
		}
	}
	return false
}
