package server

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/events"
)

// kafkaOptions turns sluice.events { kafka = ... } into the sink's
// options, reading the TLS files; it opens no connection.
func kafkaOptions(cfg *config.Config, log *slog.Logger, dead *prometheus.CounterVec) (events.KafkaOptions, error) {
	k := cfg.Events.Kafka
	o := events.KafkaOptions{
		Brokers: k.Brokers, Topic: k.Topic, BounceTopic: k.BounceTopic, Routes: k.Routes, Types: k.Types,
		Acks: k.Acks, DeadLetter: k.DeadLetter, MissingTopicWait: k.MissingTopicWait,
		BatchTimeout: k.BatchTimeout, MaxMessageBytes: k.MaxMessageBytes, Logger: log, DeadLetters: dead,
	}
	if o.DeadLetter == "" {
		o.DeadLetter = filepath.Join(filepath.Dir(cfg.Events.File), "kafka-dead-letter.jsonl")
	}
	if t := k.TLS; t != nil {
		c, err := t.Config("kafka.tls")
		if err != nil {
			return o, fmt.Errorf("%s: sluice.events: %w", cfg.File, err)
		}
		o.TLS = c
	}
	if a := k.SASL; a != nil {
		m, err := events.KafkaSASL(a.Mechanism, a.Username, a.Password)
		if err != nil {
			return o, fmt.Errorf("%s: sluice.events: %w", cfg.File, err)
		}
		o.SASL = m
	}
	return o, nil
}

// startKafka adds the Kafka sink to s.sinks when configured.
func (s *Server) startKafka() error {
	if s.cfg.Events.Kafka == nil {
		return nil
	}
	o, err := kafkaOptions(s.cfg, s.log, s.deadLetters)
	if err != nil {
		return err
	}
	ks, err := events.NewKafka(o)
	if err != nil {
		return err
	}
	s.sinks = append(s.sinks, ks)
	if k := s.cfg.Events.Kafka; k.SASL != nil && k.SASL.Mechanism == "plain" && k.TLS == nil {
		s.log.Warn("kafka: SASL plain without TLS sends the password in clear text; add kafka.tls = { ... } or use scram-sha-512")
	}
	s.log.Info("events published to Kafka", "brokers", o.Brokers, "topic", o.Topic, "bounce_topic", o.BounceTopic,
		"dead_letter", o.DeadLetter)
	return nil
}

// watchBacklog sets up the Kafka sink's backlog budget (the relay
// consults s.backlog at each commit) and its warnings until ctx ends.
func (s *Server) watchBacklog(ctx context.Context) {
	k := s.cfg.Events.Kafka
	if k == nil || k.MaxBacklog <= 0 {
		return
	}
	ex := s.ex
	b := &events.Backlog{
		Max: uint64(k.MaxBacklog), Tempfail: k.OnBacklogFull == "tempfail", Sink: events.KafkaSinkName, Logger: s.log,
		Lag: func() uint64 { n, _ := ex.Lag(events.KafkaSinkName); return n },
	}
	s.backlog.Store(b)
	go b.Watch(ctx, 5*time.Second)
}
