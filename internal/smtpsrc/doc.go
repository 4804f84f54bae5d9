// Package smtpsrc is Sluice's SMTP receiving side: one Server per configured
// SMTP listener (config.SMTPListener), built on github.com/emersion/go-smtp.
//
// A Server accepts connections (bounded by MaxConnections, and per client
// address by MaxConnectionsPerIP and MaxConnectionRatePerIP, relay
// networks exempt), runs the
// pipeline's session hooks at each SMTP step, reads the message data into
// a bounded buffer charged to the listener's in-flight byte budget
// (MaxInflightBytes; sized at once by MAIL SIZE= when given), refuses or normalises bare CR / bare LF (SMTP
// smuggling) and NUL, parses the header section and commits the message
// through the relay (internal/relay), the one owner of every transaction:
// it runs the hooks, writes the Received: field, records refusals, makes
// the message durable before we answer 250, and logs.
//
// What it is not: it does not run the chain, spool, route or deliver
// (internal/relay does), and it does not check passwords: its AUTH PLAIN
// and LOGIN (auth.go) hand the credentials to relay.Session.Login.
//
// # Hook points
//
//   - on_connect runs when a connection is admitted, before the greeting
//     (after the TLS handshake on an implicit TLS listener). A rejection is
//     sent instead of the 220 greeting with the stage's 5xx code, a
//     temporary one as 421 with the stage's enhanced code and text; then
//     the connection is closed.
//   - on_helo runs at the first EHLO/HELO (when go-smtp creates the
//     session) and again at the next MAIL after an EHLO with a new name.
//     A refusal answers the EHLO; the client must greet again.
//   - on_mail at MAIL (relay.Session.Begin: a new transaction with a fresh
//     id), on_rcpt at each RCPT (relay.Txn.Rcpt; relay control is inside
//     the chain), on_message/on_route in relay.Txn.Commit after DATA/BDAT.
//
// # Replies
//
// Every negative reply goes through one boundary function (smtpError)
// built on pipeline.Reply, so internal error texts never reach a client:
//
//	421 4.3.2  over MaxConnections (then closed); new transactions while shutting down
//	421 4.7.0  over MaxConnectionsPerIP or MaxConnectionRatePerIP (then closed)
//	421 4.4.2  DATA/BDAT not finished within DataTimeout; ReadTimeout or
//	           MaxSessionTime passed (then closed; a partial line is never run)
//	452 4.3.1  the message would take the listener past MaxInflightBytes
//	451 4.3.0  any internal failure (stage error, spool error), generic text
//	451 4.4.5  a stage exceeded the chain's StageTimeout
//	452 4.5.3  more than MaxRecipients recipients (go-smtp's check)
//	501 5.1.3  RCPT address that pipeline.NewRecipient refuses
//	552 5.3.4  message over MaxMessageSize (also MAIL ... SIZE= over it)
//	501 5.1.7  MAIL address that pipeline.ParseSender refuses (NUL, DEL,
//	           control characters, not a mailbox)
//	553 5.1.3  RCPT (5.1.7: MAIL) local part with '%', '!' or '@'
//	553 5.6.7  a non-ASCII address without the SMTPUTF8 parameter
//	554 5.4.6  the message carries MaxHops Received fields or more (a loop)
//	554 5.6.0  bare CR or bare LF (reject mode), NUL, a line over
//	           MaxLineLength (one reply after the end of data, DATA or BDAT)
//	550 5.7.1  relay denied (RFC 5321 4.3.2 lists no 554 for RCPT); other
//	           stage verdicts with their own codes
//	550 5.6.0  MAIL after a message hid a bare CR (no more mail on this connection)
//	250 2.0.0  "OK: queued as <message id>"
//
// Command lines are limited to MaxLineLength, but to no less than 1000
// octets: a longer one is read to its end and answered "500 5.5.2 Line too
// long" (our patched go-smtp, internal/third_party/go-smtp), and the
// connection goes on.
package smtpsrc
