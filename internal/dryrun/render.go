package dryrun

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/pipeline"
)

// WriteText prints t for a person: the client, one line per stage hook
// call, the recipients with their routes, the events and the reply.
func (t *Trace) WriteText(w io.Writer) error {
	fmt.Fprintf(w, "config: %s\n", t.Config)
	client := "client: " + t.Source + " from " + t.Client.IP
	if t.Client.RelayNetwork {
		client += " (relay network)"
	}
	if t.Client.HELO != "" {
		client += ", helo " + t.Client.HELO
	}
	if t.Client.Identity != "" {
		client += ", authenticated as " + t.Client.Identity
		if t.Client.Tenant != "" {
			client += " (tenant " + t.Client.Tenant + ")"
		}
	}
	fmt.Fprintln(w, client)
	if t.MessageID != "" {
		fmt.Fprintf(w, "message: %s\n", t.MessageID)
	}
	fmt.Fprintln(w, "\nstages:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if len(t.Calls) == 0 {
		fmt.Fprintln(tw, "  (no stage hook ran)")
	}
	for _, c := range t.Calls {
		hook := c.Hook
		if c.DSN {
			hook = "(dsn) " + hook
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", hook, c.Stage, c.Recipient, c.describe())
	}
	tw.Flush()
	if len(t.Added) > 0 {
		fmt.Fprintln(w, "\nheader fields added:")
		for _, f := range t.Added {
			fmt.Fprintln(w, "  "+f)
		}
	}
	fmt.Fprintln(w, "\nrecipients:")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if len(t.Recipients) == 0 {
		fmt.Fprintln(tw, "  (none: the transaction ended before RCPT)")
	}
	for _, r := range t.Recipients {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", r.Address, r.Status, r.describe())
	}
	tw.Flush()
	if len(t.Events) > 0 {
		fmt.Fprintln(w, "\nevents (not written):")
		for _, e := range t.Events {
			s := "  " + e.Type
			if e.DSN {
				s = "  (dsn) " + e.Type
			}
			if e.Recipient != "" {
				s += " " + e.Recipient
			}
			if e.Queue != "" {
				s += " queue=" + e.Queue
			}
			if e.Code != 0 {
				s += fmt.Sprintf(" code=%d", e.Code)
			}
			fmt.Fprintln(w, s)
		}
	}
	if t.Reply == nil {
		return nil
	}
	_, err := fmt.Fprintf(w, "\nreply (%s): %s\n", t.Reply.Step, t.Reply.describe())
	return err
}

func (c Call) describe() string {
	s := c.Verdict
	if c.Code != 0 {
		s += fmt.Sprintf(" %d %s %s", c.Code, c.Enhanced, c.Text)
	} else if c.Text != "" {
		s += " (" + c.Text + ")"
	}
	if c.Route != nil {
		s += " route " + routeString(c.Route)
	}
	if c.Error != "" {
		s += ": " + c.Error
	}
	if c.Edits != nil {
		s += editsString(c.Edits)
	}
	return s
}

func (r Recipient) describe() string {
	var parts []string
	if r.Route != nil {
		parts = append(parts, "route "+routeString(r.Route), "queue "+r.Queue)
	}
	if r.Reply != nil {
		parts = append(parts, r.Reply.describe())
	}
	if len(r.MX) > 0 {
		var hosts []string
		for _, m := range r.MX {
			hosts = append(hosts, fmt.Sprintf("%s (%d)", m.Host, m.Pref))
		}
		parts = append(parts, "MX "+strings.Join(hosts, ", "))
	}
	if r.MXErr != "" {
		parts = append(parts, "MX lookup: "+r.MXErr)
	}
	if r.TLS != nil {
		parts = append(parts, tlsString(r.TLS))
	}
	return strings.Join(parts, ", ")
}

func (r Reply) describe() string {
	s := fmt.Sprintf("%d %s %s", r.Code, r.Enhanced, r.Text)
	if r.HTTPStatus != 0 {
		s = fmt.Sprintf("HTTP %d", r.HTTPStatus)
		if r.HTTPCode != "" {
			s += " " + r.HTTPCode
		}
		s += fmt.Sprintf(" (pipeline: %d %s %s)", r.Code, r.Enhanced, r.Text)
	}
	return s
}

func routeString(r *pipeline.Route) string {
	s := r.Kind
	if r.Host != "" {
		s += " " + r.Host
		if r.Port != 0 {
			s += fmt.Sprintf(":%d", r.Port)
		}
	} else if r.Port != 0 {
		s += fmt.Sprintf(" port %d", r.Port)
	}
	if r.TLS != "" {
		s += " tls=" + r.TLS
	}
	if r.AuthUser != "" {
		s += " auth=" + r.AuthUser
	}
	return s
}

func editsString(e *pipeline.Edits) string {
	var b strings.Builder
	for _, h := range e.Headers {
		switch h.Op {
		case pipeline.HeaderRemove:
			fmt.Fprintf(&b, "; header -%s", h.Name)
		default:
			fmt.Fprintf(&b, "; header %s %s: %s", h.Op, h.Name, h.Value)
		}
	}
	for _, t := range e.Tags {
		fmt.Fprintf(&b, "; tag %s", t)
	}
	for _, k := range slices.Sorted(maps.Keys(e.Meta)) {
		fmt.Fprintf(&b, "; meta %s=%s", k, e.Meta[k])
	}
	for _, k := range slices.Sorted(maps.Keys(e.Scratch)) {
		fmt.Fprintf(&b, "; scratch %s=%s", k, e.Scratch[k])
	}
	for _, a := range e.AuthResults {
		fmt.Fprintf(&b, "; auth %s=%s", a.Method, a.Result)
	}
	return b.String()
}

// tlsString renders a TLS plan on one line: "TLS opportunistic; MTA-STS
// enforce id 1 mx mx.example.com; mx.example.com: dane [3 1 1 ab12...]".
func tlsString(p *delivery.TLSPlan) string {
	s := "TLS " + p.Policy
	if m := p.MTASTS; m != nil {
		s += fmt.Sprintf("; MTA-STS %s id %s mx %s max_age %ds", m.Mode, m.ID, strings.Join(m.MX, " "), m.MaxAgeSeconds)
	}
	if p.Error != "" {
		s += "; " + p.Error
	}
	for _, h := range p.Hosts {
		s += "; " + h.Host + ": "
		if h.Policy == "" {
			// Not tried: the note says why ("...: not tried").
			s += h.Note
			continue
		}
		s += h.Policy
		if len(h.TLSA) > 0 {
			s += " [" + strings.Join(h.TLSA, ", ") + "]"
		}
		if h.Note != "" {
			s += " (" + h.Note + ")"
		}
	}
	return s
}
