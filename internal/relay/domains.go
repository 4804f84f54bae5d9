package relay

import (
	"context"

	"github.com/sluice-mta/sluice/pipeline"
)

// SenderDomains is the registry of sending domains the relay consults at
// MAIL (domains.Registry): with sluice.domains { require_verified = true }
// a tenant may not use as envelope sender a domain it registered that is
// not verified yet. Safe for concurrent use.
type SenderDomains interface {
	// SenderRefusal returns "" when tenant may send from domain, else
	// the reason. An error means the answer is unknown (a spool read).
	SenderRefusal(tenant, domain string) (string, error)
}

// checkSenderDomain applies SenderDomains to the envelope sender of a
// session: a refusal is a *SenderError (550 5.7.1, HTTP 403 naming
// "from"); a registry error is 451 4.3.0. The null sender passes.
func (r *Relay) checkSenderDomain(_ context.Context, c *pipeline.Conn, sender string) error {
	if r.domains == nil || sender == "" {
		return nil
	}
	_, domain, err := pipeline.SplitAddress(sender)
	if err != nil {
		return nil // ParseSender accepted it; on_mail judges the rest
	}
	why, err := r.domains.SenderRefusal(c.Tenant(), domain)
	if err != nil {
		r.log.Warn("cannot check the sender domain", "domain", domain, "err", err)
		return pipeline.Errorf(451, pipeline.EnhancedCode{4, 3, 0}, "cannot check the sender domain now, try again later")
	}
	if why != "" {
		return senderRefused(FieldEnvelope, sender, why)
	}
	return nil
}
