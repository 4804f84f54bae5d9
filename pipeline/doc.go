// Package pipeline holds Sluice's public contracts: the message, envelope and
// connection types that stages see, the Stage interface and its optional hook
// interfaces, verdicts, routes, events, the error type that carries SMTP reply
// codes, the registry of built-in stage factories, and the Chain that runs a
// compiled list of stages.
//
// Everything else in Sluice imports this package; this package imports
// nothing of Sluice. Sources (SMTP, HTTP) build a Conn, then a Txn, then a
// Message, and call the Chain at each hook point. Stages (built-in Go, Lua,
// and later plugin binaries) implement Stage plus any subset of the hook
// interfaces (ConnectHook, HeloHook, AuthHook, MailHook, RcptHook,
// MessageHook, RouteHook, EventHook, and SignHook: the sign step after
// every on_message edit, for DKIM); the Chain discovers which by type
// assertion once, when it is compiled, never per message.
//
// Goroutine safety: a Conn, Txn and Message belong to one session goroutine
// at a time; stages must not keep references to them after a hook returns.
// Stages themselves are shared by all sessions and must be safe for
// concurrent use.
package pipeline
