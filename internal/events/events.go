// Package events publishes the spool's event outbox to sinks: a JSONL file
// now, Kafka later (a Sink of its own on this same outbox). Events reach a
// sink at least once, in outbox order; a sink that fails is retried with
// the same events until it succeeds, so nothing is skipped.
package events

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// Sink receives batches of events as JSON objects, in order. Write must
// return only once the batch is durable at the sink.
type Sink interface {
	Name() string
	Write(ctx context.Context, batch []spool.OutboxEvent) error
	Close() error
}

// FileSink appends events as JSON lines to a file and fsyncs each batch.
type FileSink struct {
	mu   sync.Mutex
	f    *os.File
	path string
	buf  []byte
}

// OpenFile opens (creating) path for appending.
func OpenFile(path string) (*FileSink, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("events file: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("events file: %w", err)
	}
	if err := dropTornLine(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("events file %s: %w", path, err)
	}
	return &FileSink{f: f, path: path}, nil
}

// dropTornLine truncates a last line that a crash cut short (no trailing
// newline). Its events were never acknowledged in the outbox, so they are
// exported again; keeping the torn line would leave invalid JSON in front
// of them.
func dropTornLine(f *os.File) error {
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return err
	}
	buf := make([]byte, 64<<10)
	end := st.Size()
	for pos := end; pos > 0; {
		n := int64(len(buf))
		if pos < n {
			n = pos
		}
		pos -= n
		if _, err := f.ReadAt(buf[:n], pos); err != nil {
			return err
		}
		if pos+n == end && buf[n-1] == '\n' {
			return nil // ends cleanly
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			return f.Truncate(pos + int64(i) + 1)
		}
	}
	return f.Truncate(0) // a single torn line
}

func (s *FileSink) Name() string { return "file:" + s.path }

func (s *FileSink) Write(ctx context.Context, batch []spool.OutboxEvent) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf = s.buf[:0]
	for _, e := range batch {
		s.buf = append(s.buf, e.JSON...)
		s.buf = append(s.buf, '\n')
	}
	st, err := s.f.Stat()
	if err != nil {
		return err
	}
	if _, err := s.f.Write(s.buf); err != nil {
		// A partial write (disk full) would leave a torn line in front of
		// the retried batch: cut the file back to where it was.
		_ = s.f.Truncate(st.Size())
		return err
	}
	if err := s.f.Sync(); err != nil {
		_ = s.f.Truncate(st.Size())
		return err
	}
	return nil
}

func (s *FileSink) Close() error { return s.f.Close() }

// Exporter moves events from the outbox to its sinks and then to the
// on_event hooks. Run it in one goroutine.
type Exporter struct {
	sp      *spool.Spool
	sinks   []Sink
	onEvent func(context.Context, *pipeline.Event)
	log     *slog.Logger
	batch   int
	done    chan struct{}
}

// NewExporter builds an exporter. onEvent may be nil.
func NewExporter(sp *spool.Spool, sinks []Sink, onEvent func(context.Context, *pipeline.Event), log *slog.Logger) *Exporter {
	if log == nil {
		log = slog.Default()
	}
	return &Exporter{sp: sp, sinks: sinks, onEvent: onEvent, log: log.With("component", "events"), batch: 1000, done: make(chan struct{})}
}

// Run exports until ctx is cancelled, then exports what is left once more
// and returns. Done is closed when it returns.
func (e *Exporter) Run(ctx context.Context) {
	defer close(e.done)
	cursor, err := e.sp.FirstOutboxSeq()
	if err != nil {
		e.log.Error("cannot read the event outbox", "err", err)
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	backoff := 100 * time.Millisecond
	for {
		n, err := e.exportOnce(ctx, &cursor)
		if err != nil {
			e.log.Error("event export failed; retrying", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			backoff = min(backoff*2, 10*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		if n == e.batch {
			continue // more waiting
		}
		select {
		case <-ctx.Done():
			// Final drain with a fresh, bounded context.
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			for {
				n, err := e.exportOnce(dctx, &cursor)
				if err != nil || n == 0 {
					break
				}
			}
			cancel()
			return
		case <-e.sp.OutboxNotify():
		case <-tick.C:
		}
	}
}

// Done is closed when Run has returned.
func (e *Exporter) Done() <-chan struct{} { return e.done }

func (e *Exporter) exportOnce(ctx context.Context, cursor *uint64) (int, error) {
	evs, err := e.sp.ReadOutbox(*cursor, e.batch)
	if err != nil || len(evs) == 0 {
		return 0, err
	}
	for _, s := range e.sinks {
		if err := s.Write(ctx, evs); err != nil {
			return 0, fmt.Errorf("sink %s: %w", s.Name(), err)
		}
	}
	next := evs[len(evs)-1].Seq + 1
	if err := e.sp.AckOutbox(evs); err != nil {
		return 0, err
	}
	*cursor = next
	if e.onEvent != nil {
		for _, raw := range evs {
			var ev pipeline.Event
			if json.Unmarshal(raw.JSON, &ev) == nil {
				e.onEvent(ctx, &ev)
			}
		}
	}
	return len(evs), nil
}
