package relay

import (
	"context"
	"errors"
	"fmt"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// StatusSuppressed is the status of a recipient refused because it is on
// the suppression list of the transaction's tenant (Receipt, HTTP
// per-recipient answers).
const StatusSuppressed = "suppressed"

// Suppressions is the suppression list the relay enforces at RCPT
// (*spool.Spool implements it). Suppressed returns tenant's entry for
// addr (canonical: spool.CanonicalAddress), or nil when addr is not
// suppressed or the list is disabled. It must be safe for concurrent use
// and cheap: it runs for every recipient.
type Suppressions interface {
	Suppressed(tenant, addr string) (*spool.Suppression, error)
}

// SuppressedError is the refusal of a suppressed recipient: 550 5.7.1.
// It unwraps to its *pipeline.Error, so pipeline.Reply answers with it.
//
// Why 550 5.7.1: the refusal is this relay's policy (RFC 3463 X.7.1,
// "delivery not authorized, message refused"), not a statement that the
// mailbox does not exist (X.1.1 would be, and an entry added through the
// API may name a mailbox that exists); 550 is RFC 5321's reply for a
// recipient refused at RCPT for policy reasons, and it is permanent, so a
// client does not retry it.
type SuppressedError struct {
	Entry *spool.Suppression
	err   *pipeline.Error
}

func (e *SuppressedError) Error() string { return e.err.Error() }
func (e *SuppressedError) Unwrap() error { return e.err }

// IsSuppressed reports whether err refused a recipient because it is
// suppressed.
func IsSuppressed(err error) bool {
	var se *SuppressedError
	return errors.As(err, &se)
}

// suppressedError builds the reply for addr suppressed by e. The text
// names the tenant, what put the address there and when, and what to do;
// it never repeats the stored reason (free text from a remote server or
// an API client): that goes to the "suppressed" event.
func suppressedError(addr, tenant string, e *spool.Suppression) *SuppressedError {
	whose := "of this relay"
	if tenant != "" {
		whose = fmt.Sprintf("of tenant %s", tenant)
	}
	why := "added by " + e.Source
	if e.Source == spool.SuppressionBounce {
		why = "hard bounce"
		if e.Class != "" {
			why += " " + e.Class
		}
	}
	msg := fmt.Sprintf("<%s>: recipient is on the suppression list %s (%s on %s); remove it to send again",
		addr, whose, why, e.Created.UTC().Format("2006-01-02"))
	return &SuppressedError{Entry: e, err: &pipeline.Error{Code: 550, Enhanced: pipeline.EnhancedCode{5, 7, 1}, Message: msg, Stage: "suppression"}}
}

var errSuppressionUnavailable = pipeline.Errorf(451, pipeline.EnhancedCode{4, 3, 0}, "Cannot check the recipient now, try again later")

// checkSuppressed refuses rc when it is on the suppression list of the
// transaction's tenant (any tenant, "" included: a client without one is
// the "" tenant). DSNs (the null sender) are never refused: a report to
// a sender must reach it. It runs after on_rcpt accepted the recipient,
// so a client that may not send there at all (relay control) learns
// nothing about the list. It logs and records the refusal: one
// "suppressed" event (not "rejected"), or, when the list cannot be read,
// a 451 recorded as "rejected".
func (t *Txn) checkSuppressed(ctx context.Context, addr string, rc *pipeline.Recipient) error {
	r := t.s.r
	if r.supp == nil || t.T.Sender == "" {
		return nil
	}
	tenant := t.s.Conn.Tenant()
	e, err := r.supp.Suppressed(tenant, pipeline.JoinAddress(rc.Local, rc.Domain))
	if err != nil {
		ferr := &pipeline.Error{Code: errSuppressionUnavailable.Code, Enhanced: errSuppressionUnavailable.Enhanced,
			Message: errSuppressionUnavailable.Message, Cause: err, Stage: "suppression"}
		if ctx.Err() == nil {
			r.logRefusal("recipient refused", t.s.Conn, ferr, "msgid", t.T.ID, "rcpt", addr)
			t.refused(ferr, r.rejected(t.T, addr, ferr))
		}
		return ferr
	}
	if e == nil {
		return nil
	}
	serr := suppressedError(addr, tenant, e)
	if ctx.Err() == nil {
		r.logRefusal("recipient suppressed", t.s.Conn, serr, "msgid", t.T.ID, "rcpt", addr, "tenant", tenant,
			"suppression_source", e.Source, "class", e.Class)
		ev := r.rejected(t.T, addr, serr)
		ev.Type = pipeline.EventSuppressed
		ev.BounceClass = e.Class
		if e.Reason != "" {
			ev.Response.Text += "; reason: " + e.Reason
		}
		t.refused(serr, ev)
	}
	return serr
}
