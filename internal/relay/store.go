package relay

import (
	"context"
	"fmt"

	"github.com/sluice-mta/sluice/internal/queue"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// SpoolStore is the production Store: the spool, then the delivery queue.
type SpoolStore struct {
	Spool *spool.Spool
	Queue *queue.Queue
}

var _ Store = (*SpoolStore)(nil)

// NewID returns the spool's next id.
func (s *SpoolStore) NewID() string { return s.Spool.NewID() }

// Commit writes accs in one synced batch and queues their recipients.
// While the spool's filesystem is below its free-space reserve it writes
// nothing and returns spool.ErrFull (pipeline.ErrSpoolFull, 452 4.3.1),
// unless accs is only bounces and events (no new mail from a client).
func (s *SpoolStore) Commit(ctx context.Context, accs []*Accepted, before BeforeCommit) error {
	for _, a := range accs {
		if a.Meta != nil && a.Meta.Source != "dsn" {
			if err := s.Spool.CheckSpace(); err != nil {
				return err
			}
			break
		}
	}
	b := s.Spool.NewBatch()
	for _, a := range accs {
		if before != nil {
			if err := before(b, a); err != nil {
				b.Discard()
				return err
			}
		}
		if err := Stage(b, a); err != nil {
			b.Discard()
			return err
		}
	}
	if err := b.Commit(true); err != nil {
		return err
	}
	for _, a := range accs {
		s.enqueue(a)
	}
	return nil
}

func (s *SpoolStore) enqueue(a *Accepted) {
	if a.Meta != nil && len(a.Rcpts) > 0 && s.Queue != nil {
		s.Queue.Enqueue(a.Meta, a.Rcpts)
	}
	if a.Bounce != nil {
		s.enqueue(a.Bounce)
	}
}

// Record writes events without a sync.
func (s *SpoolStore) Record(evs []*pipeline.Event) error {
	b := s.Spool.NewBatch()
	for _, ev := range evs {
		b.AddEvent(ev)
	}
	return b.Commit(false)
}

// Stage adds an accepted message (its bytes, recipients and events, and
// its DSN) to b.
func Stage(b *spool.Batch, a *Accepted) error {
	if a.Meta != nil && len(a.Rcpts) > 0 {
		if err := b.PutMessageParts(a.Meta, a.Head, a.Body); err != nil {
			return fmt.Errorf("spool: %w", err)
		}
		for _, r := range a.Rcpts {
			if err := b.PutRecipient(r); err != nil {
				return fmt.Errorf("spool: %w", err)
			}
		}
	}
	for _, ev := range a.Events {
		b.AddEvent(ev)
	}
	if a.Bounce != nil {
		return Stage(b, a.Bounce)
	}
	return nil
}
