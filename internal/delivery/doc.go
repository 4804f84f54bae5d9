// Package delivery is Sluice's outbound SMTP client: it finds the next hop
// for a route (MX hosts by preference, the implicit MX, or a relay),
// connects with the route's TLS policy and optional AUTH PLAIN, and carries
// mail transactions over the resulting Session, one after another, with
// per-recipient results.
//
// It is not the queue: it does not retry, schedule, pool connections or
// decide when a failure becomes a bounce. The queue calls Dialer.Dial for a
// destination, keeps the Session while it has messages for it (checking
// Session.Usable before each reuse), calls Session.Send for each message,
// classifies each recipient's result with pipeline.IsTemporary, and calls
// Session.Close when done or idle.
//
// DNS comes through a dnsx.Resolver, which reports DNS outcomes (records,
// NXDOMAIN, NODATA, temporary failure); what each means for mail (a
// bounce, a deferral, the implicit MX, the null MX's 556 5.1.10) is decided
// here, in Dial.
//
// Every failure is a *pipeline.Error classified where it happens. Errors
// that carry a remote server's reply have a *ReplyError as their Cause
// (host, IP, command, code, text: what a bounce's Diagnostic-Code and
// Remote-MTA need); connection failures match errors.Is(err,
// ErrConnection); Dial's failures have a *DialError listing each attempt.
//
// The SMTP client is our own small implementation rather than go-smtp's:
// it pipelines MAIL, RCPT and DATA when the server offers PIPELINING
// (RFC 2920, two round trips per message instead of four), controls
// deadlines per phase and honours ctx cancellation mid-command, keeps each
// reply's own text, never re-sends EHLO between messages, and detects a
// connection the server closed while idle (Usable). Its tests run against
// go-smtp's server and against scripted servers for the corner cases.
package delivery
