package events

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DeadLetterMetric is the name of the counter of events a sink gave up
// on, labelled by consumer (the sink's name). Every sink that
// dead-letters counts there; build it once per registry with
// NewDeadLetterCounter.
const DeadLetterMetric = "sluice_event_dead_letters_total"

// NewDeadLetterCounter builds sluice_event_dead_letters_total{consumer}
// and registers it with reg (nil: counted, not exported). Registering
// fails when reg already holds it: build it once and share it between the
// sinks.
func NewDeadLetterCounter(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: DeadLetterMetric,
		Help: "Events a sink gave up on and wrote to its dead-letter file instead (never dropped silently).",
	}, []string{"consumer"})
	if reg != nil {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("events: registering %s: %w", DeadLetterMetric, err)
		}
	}
	return c, nil
}

// DeadLetter is a sink's dead-letter file: JSON lines, one per event the
// sink gave up on, each fsynced before Write returns:
//
//	{"dead_at":"2026-11-30T07:22:31.5Z","consumer":"webhook:billing",
//	 "reason":"HTTP 503 Service Unavailable","event":{...the event...}}
//
// A DeadLetter is safe for concurrent use.
type DeadLetter struct {
	consumer string
	file     *FileSink
	count    prometheus.Counter
	log      *slog.Logger
	mu       sync.Mutex
}

// OpenDeadLetter opens (creating, with its directory) the dead-letter
// file at path for the sink named consumer. counter, when set, is the
// shared sluice_event_dead_letters_total; log, when set, gets one error
// line per event dead-lettered.
func OpenDeadLetter(path, consumer string, counter *prometheus.CounterVec, log *slog.Logger) (*DeadLetter, error) {
	f, err := OpenFile(path)
	if err != nil {
		return nil, fmt.Errorf("dead-letter file of %s: %w", consumer, err)
	}
	if counter == nil {
		counter, _ = NewDeadLetterCounter(nil)
	}
	if log == nil {
		log = slog.Default()
	}
	return &DeadLetter{consumer: consumer, file: f, count: counter.WithLabelValues(consumer), log: log}, nil
}

// deadLine is one line of a dead-letter file.
type deadLine struct {
	DeadAt   time.Time       `json:"dead_at"`
	Consumer string          `json:"consumer"`
	Reason   string          `json:"reason"`
	Event    json.RawMessage `json:"event"`
}

// Write appends ev with the reason the sink gave up, fsyncs, counts it
// and logs it. On an error nothing is counted and the caller must keep
// the event (retry it later): it is not in the file.
func (d *DeadLetter) Write(ev Event, reason string) error {
	line, err := json.Marshal(deadLine{DeadAt: time.Now().UTC(), Consumer: d.consumer, Reason: reason, Event: ev.JSON})
	if err != nil {
		return fmt.Errorf("dead-letter file of %s: %w", d.consumer, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.file.Write(context.Background(), []Event{{Seq: ev.Seq, JSON: line}}); err != nil {
		return fmt.Errorf("dead-letter file %s of %s: %w", d.file.path, d.consumer, err)
	}
	d.count.Inc()
	d.log.Error("event dead-lettered: the sink gave up on it", "consumer", d.consumer,
		"type", ev.Type, "message_id", ev.MessageID, "reason", reason, "file", d.file.path)
	return nil
}

// Path is the file's path.
func (d *DeadLetter) Path() string { return d.file.path }

// Close closes the file.
func (d *DeadLetter) Close() error { return d.file.Close() }
