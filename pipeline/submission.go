package pipeline

// Submission reports whether the connection submits mail on our own
// behalf rather than delivering it to us as an MX: an authenticated
// client, a client in the listener's relay networks, the HTTP API, or a
// DSN Sluice generated. Inbound checks (spf, dkim_verify, dmarc) skip such
// mail by default: our own outgoing mail is not signed yet when they run,
// and judging it by the sender domain's DMARC policy would refuse it.
func (c *Conn) Submission() bool {
	return c == nil || c.Source != SourceSMTP || c.Authenticated() || c.RelayNetwork
}
