package config

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestKafkaKeys: every key of sluice.events { kafka = ... } parses into
// the Kafka settings, TLS paths resolve against the config's directory.
func TestKafkaKeys(t *testing.T) {
	cfg, err := Parse("/etc/sluice/pipeline.lua", []byte(`local sluice = require("sluice")
sluice.events { kafka = {
  brokers = { "k1:9092", "k2:9093" }, topic = "d", bounce_topic = "b",
  routes = { deferred = "def", delivered = "ok" }, types = { "delivered", "deferred" }, acks = "leader",
  tls = { ca = "ca.pem", cert = "/abs/c.pem", key = "k.pem", server_name = "kafka.test", insecure_skip_verify = true },
  sasl = { mechanism = "scram-sha-256", username = "u", password = "p" },
  dead_letter = "/var/dead.jsonl", missing_topic_wait = "30s", batch_timeout = "2ms",
  max_message_bytes = "2MiB", max_backlog = 1000, on_backlog_full = "tempfail",
} }
`))
	if err != nil {
		t.Fatal(err)
	}
	want := &Kafka{
		Brokers: []string{"k1:9092", "k2:9093"}, Topic: "d", BounceTopic: "b",
		Routes: map[string]string{"deferred": "def", "delivered": "ok"}, Types: []string{"delivered", "deferred"}, Acks: "leader",
		TLS:        &ClientTLS{CA: filepath.FromSlash("/etc/sluice/ca.pem"), Cert: "/abs/c.pem", Key: "/etc/sluice/k.pem", ServerName: "kafka.test", InsecureSkipVerify: true},
		SASL:       &KafkaSASL{Mechanism: "scram-sha-256", Username: "u", Password: "p"},
		DeadLetter: "/var/dead.jsonl", MissingTopicWait: 30 * time.Second, BatchTimeout: 2 * time.Millisecond,
		MaxMessageBytes: 2 << 20, MaxBacklog: 1000, OnBacklogFull: "tempfail",
	}
	if !reflect.DeepEqual(cfg.Events.Kafka, want) {
		t.Errorf("got  %+v\nwant %+v", cfg.Events.Kafka, want)
	}
}

func TestKafkaKeyErrors(t *testing.T) {
	for src, want := range map[string]string{
		`acks = "none"`:                                   `"kafka.acks": want "all" or "leader"`,
		`on_backlog_full = "drop"`:                        `"kafka.on_backlog_full": want "accept" or "tempfail"`,
		`sasl = { mechanism = "gssapi", username = "u" }`: `"kafka.sasl.mechanism": want "plain"`,
		`sasl = { mechanism = "plain" }`:                  `"kafka.sasl.username": is required`,
		`tls = { cert = "c.pem" }`:                        `set both cert and key`,
		`routes = { "x" }`:                                `routes`,
		`max_backlog = -1`:                                `"kafka.max_backlog": must not be negative`,
		`batch_timeout = "0s"`:                            `batch_timeout`,
		`types = { "deliverd" }`:                          `unknown event type "deliverd"`,
		`topic = "bad topic!"`:                            `"bad topic!" is not a Kafka topic name`,
		`bounce_topic = ".."`:                             `is not a Kafka topic name`,
		`routes = { delivered = "a/b" }`:                  `want a Kafka topic name`,
		`routes = { bounce = "b" }`:                       `unknown event type "bounce"`,
		`partitions = 3`:                                  `unknown key`,
	} {
		_, err := Parse("p.lua", []byte(`local sluice = require("sluice")
sluice.events { kafka = { brokers = { "k:9092" }, `+src+` } }`))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", src, err, want)
		}
	}
}
