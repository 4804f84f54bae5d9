package dsn

import (
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// Outcome is what happened to a recipient at one delivery attempt, as the
// queue reports it in a Notice.
type Outcome int

// Outcomes.
const (
	// Failed: the recipient bounced (a permanent failure) or expired. A
	// "failed" DSN, unless its NOTIFY excludes FAILURE.
	Failed Outcome = iota + 1
	// Delayed: the recipient was deferred and stays queued. A "delayed"
	// DSN when a warning is due (NOTIFY=DELAY or no NOTIFY, and
	// sluice.delivery's delay_warning; see relay.Notify).
	Delayed
	// Delivered: the next hop accepted the recipient. With NOTIFY=SUCCESS,
	// a "relayed" DSN, or none when the hop took over DSN responsibility
	// (HopDSN), or "delivered" when the delivery was final (Final).
	Delivered
)

// Notice is one recipient's outcome that may call for a DSN. The queue
// fills one per recipient of an attempt and hands them, in one call per
// outcome batch, to relay.(*Relay).Notify, which applies NOTIFY and the
// delay-warning policy and builds at most one report.
type Notice struct {
	Outcome Outcome
	// Rcpt is the recipient as spooled: its Address, its Params (NOTIFY,
	// ORCPT) and, for Delayed, Warned. For Delayed it must be the very
	// value the queue put into the outcome batch and keeps in memory:
	// Notify sets Rcpt.Warned when it sends a warning and puts Rcpt into
	// the batch again, so the mark commits with the warning.
	Rcpt *spool.Recipient
	// Err is the last attempt's error (Failed, Delayed), as in
	// queue.Failure: a remote reply carries a *delivery.ReplyError.
	Err error
	// Reply is the reply recorded in the event, used when Err is nil.
	Reply *pipeline.Response
	// Expired: Failed because the queue lifetime ran out.
	Expired bool
	// Remote is the host name of the server that answered, if any.
	Remote string
	// Time is when the attempt ended (Last-Attempt-Date; the clock of the
	// delay-warning policy). Zero means now.
	Time time.Time
	// RetryUntil is, for Delayed, when the queue gives up (the message's
	// arrival plus queue_lifetime): Will-Retry-Until.
	RetryUntil time.Time
	// HopDSN (Delivered): the next hop advertised DSN and accepted the
	// recipient with its NOTIFY and ORCPT passed on. It then owes the
	// sender the success DSN (RFC 3461 section 5.2.1), so Sluice sends
	// none; without it Sluice sends "relayed" (section 5.2.2).
	HopDSN bool
	// Final (Delivered): the hop put the message into the recipient's
	// mailbox (LMTP, a capture route), so the report says "delivered"
	// (RFC 3461 section 5.2.3). No route does this yet.
	Final bool
}
