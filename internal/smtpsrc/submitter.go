package smtpsrc

import (
	"context"

	"github.com/sluice-mta/sluice/pipeline"
)

// Submitter makes an approved message durable and queues it. Submit runs
// on_message and on_route and returns only after the message is fsync'd.
//
// Ownership: msg, and in particular msg.Body, which aliases a pooled
// buffer, are valid only until Submit returns; a Submitter that keeps any
// part of the message after returning must copy it (msg.Bytes() copies).
//
// Errors: the source answers the client with pipeline.Reply(err) and then
// calls Rejected(ctx, txn, "", err) itself, so Submit must not record a
// "rejected" event for an error it returns.
//
// Implementations must be safe for concurrent use by many sessions.
type Submitter interface {
	Submit(ctx context.Context, msg *pipeline.Message) (*Receipt, error)
	// Rejected records a "rejected" event for a recipient refused at RCPT
	// (or a whole txn refused at DATA when rcpt==""). Must not block for
	// long.
	Rejected(ctx context.Context, txn *pipeline.Txn, rcpt string, err error)
}

// Receipt is what Submit reports about an accepted message.
type Receipt struct {
	MessageID string // the txn's id, as spooled
	Queued    int    // recipients queued for delivery
	Discarded bool   // on_message discarded the message (still 250 to the client)
}
