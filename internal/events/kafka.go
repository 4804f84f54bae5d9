package events

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/sluice-mta/sluice/pipeline"
)

// KafkaSinkName names the Kafka sink's cursor in the spool.
const KafkaSinkName = "kafka"

// KafkaSchemaVersion is the schema_version header of every record: the
// event JSON's "schema" field.
const KafkaSchemaVersion = "1"

// BounceTypes are the event types the bounce topic carries (besides the
// delivery topic, which carries every event). The suppression_* types
// are routed there once they are produced.
var BounceTypes = []string{
	pipeline.EventBounced, pipeline.EventExpired, pipeline.EventRejected, pipeline.EventSuppressed,
	"suppression_added", "suppression_removed",
}

// KafkaOptions configures NewKafka. Zero values take the defaults.
type KafkaOptions struct {
	// Brokers are the bootstrap brokers, "host:port"; at least one.
	Brokers []string
	// Topic carries every published event; BounceTopic the BounceTypes
	// too. Both are required.
	Topic, BounceTopic string
	// Routes sends the events of a type to one more topic each.
	Routes map[string]string
	// Types, when not empty, is the set of event types published; the
	// others are skipped (and their cursor moves on).
	Types []string
	// Acks is "all" (the default: every in-sync replica has the record)
	// or "leader".
	Acks string
	// TLS, when set, encrypts the connections (config.ClientTLS.Config builds it).
	TLS *tls.Config
	// SASL, when set, authenticates the connections (see KafkaSASL).
	SASL sasl.Mechanism
	// DeadLetter is the JSONL file of events that can never be published
	// (required).
	DeadLetter string
	// MissingTopicWait is how long a topic may be missing before its
	// events are dead-lettered (1 minute); until then the batch fails
	// and is retried.
	MissingTopicWait time.Duration
	// BatchTimeout is the longest a partial batch waits for more records
	// before it is sent (1 ms: Write already hands over every event the
	// exporter has, so waiting only adds latency; kafka-go's own default,
	// 1 s, makes a synchronous writer crawl).
	BatchTimeout time.Duration
	// BatchSize is the most records per produce request and partition;
	// match the exporter's batch (1000).
	BatchSize int
	// MaxMessageBytes is the largest record (key, value and headers)
	// sent (1 MiB, the broker's default message.max.bytes); a larger
	// one is dead-lettered.
	MaxMessageBytes int64
	// WriteTimeout bounds one produce request (10 s).
	WriteTimeout time.Duration
	Logger       *slog.Logger
	// DeadLetters is the shared sluice_event_dead_letters_total counter
	// (NewDeadLetterCounter, built once per registry for every sink);
	// nil: counted, not exported.
	DeadLetters *prometheus.CounterVec
}

// KafkaSink publishes events to Kafka with kafka-go: record key = the
// message id (hash balancer, so one message's events stay in order on one
// partition), value = the event JSON unchanged, headers event_type,
// schema_version and content-type. Write returns once the broker
// acknowledged every record of the batch (acks per KafkaOptions.Acks), so
// the exporter moves the sink's cursor only past published events: at
// least once. Events that can never be published (too large, a topic
// still missing after MissingTopicWait) go to the dead-letter file
// instead, with a log line and a metric. Write is called from one
// goroutine at a time (the exporter's); Close may be called concurrently
// once.
type KafkaSink struct {
	o    KafkaOptions
	w    *kafka.Writer
	log  *slog.Logger
	want map[string]bool // nil: every type
	// topics and headers per event type, built once (read-only).
	mu      sync.Mutex
	topics  map[string][]string
	headers map[string][]kafka.Header

	missing map[string]time.Time // topic → first seen missing
	dead    *prometheus.CounterVec

	msgs []kafka.Message // reused by Write
}

// NewKafka builds the Kafka sink; it does no I/O (the first Write
// connects). It fails when a required option is missing or the metric is
// already registered.
func NewKafka(o KafkaOptions) (*KafkaSink, error) {
	if len(o.Brokers) == 0 {
		return nil, errors.New("kafka sink: no brokers; set sluice.events { kafka = { brokers = {\"host:9092\"} } }")
	}
	if o.Topic == "" || o.BounceTopic == "" {
		return nil, errors.New("kafka sink: topic and bounce_topic must be set")
	}
	if o.DeadLetter == "" {
		return nil, errors.New("kafka sink: no dead-letter file; set kafka.dead_letter")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MissingTopicWait <= 0 {
		o.MissingTopicWait = time.Minute
	}
	if o.BatchTimeout <= 0 {
		o.BatchTimeout = time.Millisecond
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 1000
	}
	if o.MaxMessageBytes <= 0 {
		o.MaxMessageBytes = 1 << 20
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 10 * time.Second
	}
	acks := kafka.RequireAll
	switch o.Acks {
	case "", "all":
	case "leader":
		acks = kafka.RequireOne
	default:
		return nil, fmt.Errorf("kafka sink: acks %q: want \"all\" or \"leader\"", o.Acks)
	}
	s := &KafkaSink{o: o, log: o.Logger.With("component", "events", "consumer", KafkaSinkName),
		topics: map[string][]string{}, headers: map[string][]kafka.Header{}, missing: map[string]time.Time{}}
	if len(o.Types) > 0 {
		s.want = map[string]bool{}
		for _, t := range o.Types {
			s.want[t] = true
		}
	}
	s.w = &kafka.Writer{
		Addr:         kafka.TCP(o.Brokers...),
		Balancer:     &kafka.Hash{},
		RequiredAcks: acks,
		BatchTimeout: o.BatchTimeout,
		BatchSize:    o.BatchSize,
		BatchBytes:   o.MaxMessageBytes,
		WriteTimeout: o.WriteTimeout,
		ReadTimeout:  o.WriteTimeout,
		// The exporter retries a failed batch with its own backoff and
		// logs each try; kafka-go's ten attempts would only hide an
		// outage for longer.
		MaxAttempts:     3,
		WriteBackoffMin: 50 * time.Millisecond,
		WriteBackoffMax: 500 * time.Millisecond,
		Transport: &kafka.Transport{
			TLS: o.TLS, SASL: o.SASL, ClientID: "sluice",
			// A topic created while events wait is seen soon.
			MetadataTTL: 2 * time.Second,
		},
	}
	s.dead = o.DeadLetters
	if s.dead == nil {
		s.dead, _ = NewDeadLetterCounter(nil)
	}
	s.dead.WithLabelValues(KafkaSinkName)
	return s, nil
}

// Name is "kafka".
func (s *KafkaSink) Name() string { return KafkaSinkName }

// Close flushes and closes the producer's connections.
func (s *KafkaSink) Close() error { return s.w.Close() }

// topicsFor returns the topics an event type goes to (none when Types
// leaves it out).
func (s *KafkaSink) topicsFor(typ string) ([]string, []kafka.Header) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ts, ok := s.topics[typ]; ok {
		return ts, s.headers[typ]
	}
	var ts []string
	if s.want == nil || s.want[typ] {
		ts = append(ts, s.o.Topic)
		if slices.Contains(BounceTypes, typ) && s.o.BounceTopic != s.o.Topic {
			ts = append(ts, s.o.BounceTopic)
		}
		if r, ok := s.o.Routes[typ]; ok && !slices.Contains(ts, r) {
			ts = append(ts, r)
		}
	}
	h := []kafka.Header{
		{Key: "event_type", Value: []byte(typ)},
		{Key: "schema_version", Value: []byte(KafkaSchemaVersion)},
		{Key: "content-type", Value: []byte("application/json")},
	}
	s.topics[typ], s.headers[typ] = ts, h
	return ts, h
}

// deadLetter is one line of the dead-letter file: the fields of every
// sink's dead letters (deadLine in deadletter.go) and the topic.
type deadLetter struct {
	Time   time.Time       `json:"dead_at"`
	Sink   string          `json:"consumer"`
	Topic  string          `json:"topic"`
	Reason string          `json:"reason"`
	Event  json.RawMessage `json:"event"`
}

// Write publishes batch and returns once every record is acknowledged or
// dead-lettered; otherwise it fails as a whole and the exporter retries it
// (records already acknowledged are then published again: consumers
// dedupe on event_id).
func (s *KafkaSink) Write(ctx context.Context, batch []Event) error {
	s.msgs = s.msgs[:0]
	var dead []deadLetter
	for _, e := range batch {
		ts, h := s.topicsFor(e.Type)
		for _, t := range ts {
			s.msgs = append(s.msgs, kafka.Message{Topic: t, Key: []byte(e.MessageID), Value: e.JSON, Headers: h})
		}
	}
	msgs := s.msgs
	for len(msgs) > 0 {
		err := s.w.WriteMessages(ctx, msgs...)
		if err == nil {
			break
		}
		var werrs kafka.WriteErrors
		var tooLarge kafka.MessageTooLargeError
		switch {
		case errors.As(err, &tooLarge):
			// kafka-go's size check, before anything is sent (one record
			// per call: O(n²) only if many records are too large): that
			// record goes to the dead letters, the others are sent.
			dead = append(dead, deadLetter{Topic: tooLarge.Message.Topic, Event: tooLarge.Message.Value,
				Reason: fmt.Sprintf("record larger than max_message_bytes (%d)", s.o.MaxMessageBytes)})
			msgs = tooLarge.Remaining
		case errors.As(err, &werrs):
			// Per record: anything but a permanent refusal fails the
			// batch. The broker refuses a whole produce batch when one
			// record is too large, so records refused permanently are
			// sent again one by one: only those refused alone are dead.
			var refused []kafka.Message
			for i, werr := range werrs {
				if werr == nil {
					continue
				}
				if !permanent(werr) {
					return fmt.Errorf("publishing to topic %s: %w%s", msgs[i].Topic, werr, hint(werr, s.o.SASL != nil))
				}
				refused = append(refused, msgs[i])
			}
			for _, m := range refused {
				err := s.w.WriteMessages(ctx, m)
				var one kafka.WriteErrors
				if errors.As(err, &one) && len(one) == 1 && permanent(one[0]) {
					dead = append(dead, deadLetter{Topic: m.Topic, Event: m.Value, Reason: one[0].Error()})
				} else if err != nil {
					return fmt.Errorf("publishing to topic %s: %w%s", m.Topic, err, hint(err, s.o.SASL != nil))
				}
			}
			msgs = nil
		case errors.Is(err, kafka.UnknownTopicOrPartition):
			rest, gone, err := s.missingTopics(ctx, msgs)
			if err != nil {
				return err
			}
			dead = append(dead, gone...)
			msgs = rest
		default:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("publishing %d records to %s: %w%s", len(msgs), strings.Join(s.o.Brokers, ","), err, hint(err, s.o.SASL != nil))
		}
	}
	if len(msgs) == len(s.msgs) {
		clear(s.missing) // every topic exists
	}
	if len(dead) > 0 {
		if err := s.writeDead(dead); err != nil {
			return err
		}
	}
	return nil
}

// permanent reports a broker's refusal of a record that no retry cures.
func permanent(err error) bool {
	return errors.Is(err, kafka.MessageSizeTooLarge) || errors.Is(err, kafka.RecordListTooLarge) ||
		errors.Is(err, kafka.InvalidRecord) || errors.Is(err, kafka.InvalidMessage)
}

// hint says what to do about a transient error an operator can fix.
func hint(err error, sasl bool) string {
	switch {
	case errors.Is(err, kafka.SASLAuthenticationFailed):
		return " (check kafka.sasl username, password and mechanism; events are kept and retried)"
	case sasl && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)):
		// Brokers close the connection on a failed SASL handshake, often
		// before the client reads the error.
		return " (the broker closed the connection: check kafka.sasl username, password and mechanism, and kafka.tls; events are kept and retried)"
	case errors.Is(err, kafka.TopicAuthorizationFailed), errors.Is(err, kafka.ClusterAuthorizationFailed):
		return " (grant this user WRITE on the topic; events are kept and retried)"
	}
	return " (events are kept in the outbox and retried)"
}

// missingTopics asks the brokers which of msgs' topics exist. Records
// for a topic missing for longer than MissingTopicWait are returned as
// dead letters, the others to publish; while a topic has been missing
// for less, it returns an error (the batch is retried).
func (s *KafkaSink) missingTopics(ctx context.Context, msgs []kafka.Message) (rest []kafka.Message, dead []deadLetter, err error) {
	var names []string
	for i := range msgs {
		if !slices.Contains(names, msgs[i].Topic) {
			names = append(names, msgs[i].Topic)
		}
	}
	c := &kafka.Client{Addr: s.w.Addr, Transport: s.w.Transport, Timeout: s.o.WriteTimeout}
	md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: names})
	if err != nil {
		return nil, nil, fmt.Errorf("asking the brokers which topics exist: %w%s", err, hint(err, s.o.SASL != nil))
	}
	now := time.Now()
	expired := map[string]bool{}
	var waiting []string
	for _, t := range md.Topics {
		if t.Error == nil || !errors.Is(t.Error, kafka.UnknownTopicOrPartition) {
			delete(s.missing, t.Name)
			continue
		}
		first, ok := s.missing[t.Name]
		if !ok {
			first = now
			s.missing[t.Name] = now
		}
		if now.Sub(first) >= s.o.MissingTopicWait {
			expired[t.Name] = true
		} else {
			waiting = append(waiting, t.Name)
		}
	}
	if len(waiting) > 0 {
		return nil, nil, fmt.Errorf("topic %s does not exist: create it (its events are kept and retried, and dead-lettered after kafka.missing_topic_wait = %s)",
			strings.Join(waiting, ", "), s.o.MissingTopicWait)
	}
	if len(expired) == 0 {
		// Every topic exists now (the metadata cache was stale): retry.
		return nil, nil, fmt.Errorf("publishing: %w (metadata was stale; retrying)", kafka.UnknownTopicOrPartition)
	}
	for i := range msgs {
		if expired[msgs[i].Topic] {
			dead = append(dead, deadLetter{Topic: msgs[i].Topic, Event: msgs[i].Value,
				Reason: fmt.Sprintf("topic %s missing for more than %s", msgs[i].Topic, s.o.MissingTopicWait)})
		} else {
			rest = append(rest, msgs[i])
		}
	}
	return rest, dead, nil
}

// writeDead appends dead letters to the dead-letter file and fsyncs it;
// the batch is acknowledged only once they are durable.
func (s *KafkaSink) writeDead(dead []deadLetter) error {
	if err := os.MkdirAll(filepath.Dir(s.o.DeadLetter), 0o755); err != nil {
		return fmt.Errorf("dead-letter file: %w", err)
	}
	f, err := os.OpenFile(s.o.DeadLetter, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("dead-letter file: %w", err)
	}
	var buf []byte
	now := time.Now().UTC()
	for i := range dead {
		dead[i].Time, dead[i].Sink = now, KafkaSinkName
		b, err := json.Marshal(&dead[i])
		if err != nil {
			f.Close()
			return fmt.Errorf("dead-letter file: %w", err)
		}
		buf = append(append(buf, b...), '\n')
	}
	if _, err := f.Write(buf); err != nil {
		f.Close()
		return fmt.Errorf("dead-letter file %s: %w", s.o.DeadLetter, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("dead-letter file %s: %w", s.o.DeadLetter, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("dead-letter file %s: %w", s.o.DeadLetter, err)
	}
	s.dead.WithLabelValues(KafkaSinkName).Add(float64(len(dead)))
	s.log.Error("events that can never be published written to the dead-letter file",
		"n", len(dead), "file", s.o.DeadLetter, "reason", dead[0].Reason, "topic", dead[0].Topic)
	return nil
}

// KafkaSASL builds the SASL mechanism of kafka.sasl: "plain",
// "scram-sha-256" or "scram-sha-512".
func KafkaSASL(mechanism, username, password string) (sasl.Mechanism, error) {
	switch strings.ToLower(mechanism) {
	case "plain":
		return plain.Mechanism{Username: username, Password: password}, nil
	case "scram-sha-256":
		return scram.Mechanism(scram.SHA256, username, password)
	case "scram-sha-512":
		return scram.Mechanism(scram.SHA512, username, password)
	}
	return nil, fmt.Errorf("kafka.sasl.mechanism %q: want \"plain\", \"scram-sha-256\" or \"scram-sha-512\"", mechanism)
}
