// Package delivery is Sluice's outbound SMTP client: it finds the next hop
// for a route (MX hosts by preference, the implicit MX, or a relay),
// connects with the route's TLS policy and optional AUTH PLAIN, and carries
// mail transactions over the resulting Session, one after another, with
// per-recipient results.
//
// It is not the queue: it does not retry, schedule, pool connections or
// decide when a failure becomes a bounce. The queue calls Dialer.Dial for a
// destination, keeps the Session while it has messages for it (checking
// Session.Usable before each reuse), calls Session.Deliver for each
// message (an Envelope with the spooled MAIL and RCPT parameters),
// classifies each recipient's Result with pipeline.IsTemporary, and calls
// Session.Close when done or idle.
//
// Rules is the one table of how every next-hop reply and every local
// failure is classified (docs/delivery.md shows it). Deliver passes each
// parameter only to a next hop that offers its extension, bounces 8-bit
// content for a hop without 8BITMIME (5.6.3) and SMTPUTF8 mail for a hop
// without SMTPUTF8 (5.6.7), and Dial never delivers to an MX host that is
// this node (Self) or one less preferred (5.4.6 when it is the best).
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
