package config

import (
	"net/mail"
	"time"

	lua "github.com/yuin/gopher-lua"
)

// TLSReporting: sluice.tls_reporting { ... }. SMTP TLS Reporting (RFC
// 8460, docs/tls-reporting.md): count the TLS policy outcome of every
// delivery session and send each recipient domain that publishes a
// _smtp._tls TXT record a daily aggregate report; recognise reports
// sent to us (the tls_report event). Without the section nothing is
// counted or sent, and inbound reports are still recognised by their
// content type.
type TLSReporting struct {
	// Enabled: count and send (default true once the section is given;
	// false keeps inbound recognition only).
	Enabled bool
	// Organization is the report's organization-name; Contact its
	// contact-info (an address or URL). Both required.
	Organization, Contact string
	// From is the sender of mailed reports, header and envelope;
	// default "tlsrpt-noreply@" + the node's host name.
	From string
	// SendAt is the time of day (UTC), as a duration past midnight, at
	// which the previous day's reports go out; "HH:MM", default 01:00.
	SendAt time.Duration
	// InboundAddresses are recipients whose mail is parsed as a report
	// whatever its content type (lower case); mail to others is parsed
	// when its type says it is a report.
	InboundAddresses []string
	// FlushInterval is how often the counts are saved to the spool;
	// default 30s (a crash loses at most that much of the day).
	FlushInterval time.Duration
	// MaxPolicies bounds the (day, domain, policy type) rows kept,
	// MaxDetails the failure-detail rows of each; defaults 10000 and 100.
	MaxPolicies, MaxDetails int
	// KeepDays is how many days of counts are kept; default 7.
	KeepDays int
	// HTTPTimeout bounds one https: POST (default 30s); Retries is how
	// many times a failed POST is retried (default 2, a minute apart,
	// doubling).
	HTTPTimeout time.Duration
	Retries     int
}

// sluice.tls_reporting { organization = "Example Mail", contact = "mailto:tls@example.com", ... }
func (ld *loader) tlsReporting(L *lua.LState) int {
	const fn = "sluice.tls_reporting"
	ld.singleton(fn)
	o := ld.s.CheckOpts(1, fn, "enabled", "organization", "contact", "from", "send_at", "inbound_addresses",
		"flush_interval", "max_policies", "max_details", "keep_days", "http_timeout", "retries")
	t := &TLSReporting{Enabled: true, SendAt: time.Hour, FlushInterval: 30 * time.Second,
		MaxPolicies: 10000, MaxDetails: 100, KeepDays: 7, HTTPTimeout: 30 * time.Second, Retries: 2}
	o.Bool("enabled", &t.Enabled)
	if !o.String("organization", &t.Organization) || t.Organization == "" {
		o.Fail("organization", "is required: the organization-name of our reports (say, your company's name)")
	}
	if !o.String("contact", &t.Contact) || t.Contact == "" {
		o.Fail("contact", "is required: the contact-info of our reports (say, \"mailto:postmaster@example.com\")")
	}
	if o.String("from", &t.From) {
		if a, err := mail.ParseAddress(t.From); err != nil || a.Name != "" {
			o.Fail("from", "want a bare address such as \"tlsrpt-noreply@example.com\", got %q", t.From)
		}
	}
	var at string
	if o.String("send_at", &at) {
		tm, err := time.Parse("15:04", at)
		if err != nil {
			o.Fail("send_at", "want a UTC time of day \"HH:MM\", got %q", at)
		}
		t.SendAt = time.Duration(tm.Hour())*time.Hour + time.Duration(tm.Minute())*time.Minute
	}
	o.Strings("inbound_addresses", &t.InboundAddresses)
	for i, a := range t.InboundAddresses {
		if _, err := mail.ParseAddress(a); err != nil {
			o.Fail("inbound_addresses", "entry %d, %q, is not an address", i+1, a)
		}
	}
	if ld.duration(o, "flush_interval", &t.FlushInterval) && t.FlushInterval < time.Second {
		o.Fail("flush_interval", "want at least 1s")
	}
	if o.Int("max_policies", &t.MaxPolicies) && (t.MaxPolicies < 1 || t.MaxPolicies > 10_000_000) {
		o.Fail("max_policies", "want 1 to 10000000, got %d", t.MaxPolicies)
	}
	if o.Int("max_details", &t.MaxDetails) && (t.MaxDetails < 1 || t.MaxDetails > 10000) {
		o.Fail("max_details", "want 1 to 10000, got %d", t.MaxDetails)
	}
	if o.Int("keep_days", &t.KeepDays) && (t.KeepDays < 2 || t.KeepDays > 366) {
		o.Fail("keep_days", "want 2 to 366, got %d", t.KeepDays)
	}
	if ld.duration(o, "http_timeout", &t.HTTPTimeout) && t.HTTPTimeout < time.Second {
		o.Fail("http_timeout", "want at least 1s")
	}
	if o.Int("retries", &t.Retries) && (t.Retries < 0 || t.Retries > 10) {
		o.Fail("retries", "want 0 to 10, got %d", t.Retries)
	}
	ld.cfg.TLSReporting = t
	return 0
}
