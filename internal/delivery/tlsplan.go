package delivery

import (
	"context"

	"github.com/sluice-mta/sluice/internal/mtasts"
	"github.com/sluice-mta/sluice/pipeline"
)

// TLSPlan is the TLS policy a Dial would apply, host by host, as
// `sluice test --route` shows it.
type TLSPlan struct {
	// Policy is the route's policy (route.TLS, else the delivery
	// default): opportunistic, required, verify, dane-or-mta-sts, none.
	Policy string `json:"policy"`
	// MTASTS is the recipient domain's MTA-STS policy, when it has one
	// that applies (mode enforce or testing).
	MTASTS *STSPlan `json:"mta_sts,omitempty"`
	// Hosts are the MX hosts (or the relay host) in the order Dial tries
	// them.
	Hosts []HostTLS `json:"hosts,omitempty"`
	// Error is why no host could be listed (the MX lookup failed, null
	// MX, ...).
	Error string `json:"error,omitempty"`
}

// STSPlan is an MTA-STS policy (RFC 8461 section 3.2).
type STSPlan struct {
	ID            string   `json:"id"`
	Mode          string   `json:"mode"`
	MX            []string `json:"mx"`
	MaxAgeSeconds int64    `json:"max_age"`
}

// HostTLS is the TLS policy of the attempts to one host.
type HostTLS struct {
	Host string `json:"host"`
	// Policy is what applies to this host: "dane", "mta-sts", or the
	// route's policy; "" when the host is not tried.
	Policy string `json:"policy"`
	// TLSA are the host's usable DNSSEC-authenticated TLSA records
	// ("3 1 1 <hex>") under DANE.
	TLSA []string `json:"tlsa,omitempty"`
	// Note says why DANE does or does not apply, or why the host is not
	// tried.
	Note string `json:"note,omitempty"`
}

// TLSPlan looks up what Dial would do about TLS for route and domain
// (see Dial): the MTA-STS policy (cached as Dial caches it), each host's
// DANE records. It sends no mail and opens no SMTP connection. Lookup
// failures are reported in the plan, not as errors.
func (d *Dialer) TLSPlan(ctx context.Context, route *pipeline.Route, domain string) *TLSPlan {
	if route == nil {
		route = pipeline.MX()
	}
	policy, port := d.policyPort(route)
	plan := &TLSPlan{Policy: policy}
	if err := route.Validate(); err != nil {
		plan.Error = err.Error()
		return plan
	}
	sts, _ := d.stsPolicyReport(ctx, route, domain, policy, nil)
	if sts != nil {
		plan.MTASTS = &STSPlan{ID: sts.ID, Mode: sts.Mode, MX: sts.MX, MaxAgeSeconds: int64(sts.MaxAge.Seconds())}
		if sts.Mode == mtasts.ModeEnforce {
			policy = tlsMTASTS
		}
	}
	targets, err := d.targets(ctx, route, domain, port)
	if err != nil {
		plan.Error = asReply(err).Message
		return plan
	}
	tr := d.daneResolver(route, domain, policy)
	for _, t := range targets {
		h := HostTLS{Host: t.host}
		if sts != nil && sts.Mode == mtasts.ModeEnforce && !sts.Match(t.host) {
			h.Note = "not in the MTA-STS policy: not tried"
			plan.Hosts = append(plan.Hosts, h)
			continue
		}
		secure := t.addrsSecure
		if t.addrs == nil {
			_, secure, err = d.resolve(ctx, route, t)
			if err != nil {
				h.Note = "address lookup: " + asReply(err).Message
			}
		}
		tpolicy, st, err := d.hostPolicy(ctx, tr, t, secure, policy, domain, port)
		switch {
		case err != nil:
			h.Note = asReply(err).Message + ": not tried"
		case st != nil && st.unusable:
			h.Policy, h.Note = tpolicy, "DNSSEC-authenticated TLSA records, none usable (RFC 7672 section 3.1.3): TLS required, not authenticated"
		case st != nil:
			h.Policy = tpolicy
			for _, r := range st.tlsa {
				h.TLSA = append(h.TLSA, r.String())
			}
		case h.Note != "":
			h.Policy = tpolicy
		default:
			h.Policy = tpolicy
			switch {
			case tr == nil && route.Kind == pipeline.RouteMX && policy != pipeline.TLSNone:
				h.Note = "DANE off (sluice.delivery{ dane = true } enables it)"
			case tr == nil:
			case !t.secure:
				h.Note = "MX records not DNSSEC-authenticated: no DANE"
			case !secure:
				h.Note = "addresses not DNSSEC-authenticated: no DANE"
			default:
				h.Note = "no DNSSEC-authenticated TLSA records: no DANE"
			}
		}
		plan.Hosts = append(plan.Hosts, h)
	}
	return plan
}
