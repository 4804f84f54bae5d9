package events

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/spool"
	tu "github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

const (
	tDelivery = "t.delivery"
	tBounce   = "t.bounce"
	tDeferred = "t.deferred"
)

// startKafka starts an in-process Kafka-protocol broker (one broker) and
// returns its address.
func startKafka(t testing.TB, opts ...kfake.Opt) (*kfake.Cluster, string) {
	t.Helper()
	opts = append([]kfake.Opt{kfake.NumBrokers(1)}, opts...)
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, c.ListenAddrs()[0]
}

// logBuf collects log lines for assertions.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// record is one record read back from a topic.
type record struct {
	topic   string
	key     string
	headers map[string]string
	ev      struct {
		EventID   string `json:"event_id"`
		Type      string `json:"type"`
		MessageID string `json:"message_id"`
		Attempt   int    `json:"attempt"`
	}
	value []byte
}

// groupReader reads topics as a consumer group from the first offset,
// until ctx ends; rec receives every record.
type groupReader struct {
	mu   sync.Mutex
	recs []record
	done chan struct{}
	stop context.CancelFunc
}

func readGroup(t testing.TB, addr, group string, topics ...string) *groupReader {
	t.Helper()
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: []string{addr}, GroupID: group, GroupTopics: topics,
		StartOffset: kafka.FirstOffset, MinBytes: 1, MaxBytes: 10 << 20, MaxWait: 50 * time.Millisecond,
		HeartbeatInterval: 100 * time.Millisecond, CommitInterval: 0,
		Logger: nil, ErrorLogger: nil, ReadBackoffMin: 50 * time.Millisecond, ReadBackoffMax: 200 * time.Millisecond,
	})
	ctx, cancel := context.WithCancel(context.Background())
	g := &groupReader{done: make(chan struct{}), stop: cancel}
	go func() {
		defer close(g.done)
		defer r.Close()
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				time.Sleep(50 * time.Millisecond)
				continue
			}
			rc := record{topic: m.Topic, key: string(m.Key), headers: map[string]string{}, value: m.Value}
			for _, h := range m.Headers {
				rc.headers[h.Key] = string(h.Value)
			}
			if err := json.Unmarshal(m.Value, &rc.ev); err != nil {
				rc.ev.Type = "undecodable: " + err.Error()
			}
			g.mu.Lock()
			g.recs = append(g.recs, rc)
			g.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-g.done })
	return g
}

func (g *groupReader) records() []record {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]record(nil), g.recs...)
}

// count is how many distinct event ids were read on topic.
func (g *groupReader) count(topic string) int {
	ids := map[string]bool{}
	for _, r := range g.records() {
		if r.topic == topic {
			ids[r.ev.EventID] = true
		}
	}
	return len(ids)
}

// kafkaEvent is event n of a test run: messages km0..km9 take turns, and
// every message goes received, deferred, then delivered or bounced.
func kafkaEvent(n int) *pipeline.Event {
	typ := []string{pipeline.EventReceived, pipeline.EventDeferred, pipeline.EventDelivered, pipeline.EventBounced}[(n/10)%4]
	return &pipeline.Event{Type: typ, MessageID: fmt.Sprintf("km%d", n%10), Attempt: n, Recipient: "bob@example.org"}
}

func commitKafkaEvents(t testing.TB, sp *spool.Spool, from, to int) {
	for n := from; n < to; n++ {
		b := sp.NewBatch()
		b.AddEvent(kafkaEvent(n))
		if err := b.Commit(false); err != nil {
			t.Fatal(err)
		}
	}
}

func newKafkaSink(t testing.TB, addr string, dir string, reg prometheus.Registerer, log *slog.Logger, mod func(*KafkaOptions)) *KafkaSink {
	t.Helper()
	o := KafkaOptions{Brokers: []string{addr}, Topic: tDelivery, BounceTopic: tBounce,
		Routes: map[string]string{pipeline.EventDeferred: tDeferred}, DeadLetter: filepath.Join(dir, "dead.jsonl"),
		Logger: log}
	if reg != nil {
		dead, err := NewDeadLetterCounter(reg)
		if err != nil {
			t.Fatal(err)
		}
		o.DeadLetters = dead
	}
	if mod != nil {
		mod(&o)
	}
	ks, err := NewKafka(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ks.Close() })
	return ks
}

func runExporter(t testing.TB, sp *spool.Spool, sinks []Sink, reg prometheus.Registerer, log *slog.Logger) *Exporter {
	t.Helper()
	ex, err := NewExporter(sp, sinks, Options{Logger: log, Metrics: reg, RetryMax: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go ex.Run(ctx)
	t.Cleanup(func() { cancel(); <-ex.Done() })
	return ex
}

// checkOrder fails unless, per message, the records on topic come in
// outbox order (attempt = n grows) once duplicates are dropped.
func checkOrder(t *testing.T, recs []record, topic string) {
	t.Helper()
	last := map[string]int{}
	seen := map[string]bool{}
	for _, r := range recs {
		if r.topic != topic || seen[r.ev.EventID] {
			continue
		}
		seen[r.ev.EventID] = true
		if prev, ok := last[r.key]; ok && r.ev.Attempt < prev {
			t.Errorf("topic %s, message %s: event %d after event %d", topic, r.key, r.ev.Attempt, prev)
		}
		last[r.key] = r.ev.Attempt
	}
}

// TestKafkaRecords: every record has key = message id, value = the event
// JSON unchanged, the three headers, and the topic routing of the
// options; a consumer group reads both topics; the dead-letter file stays
// absent.
func TestKafkaRecords(t *testing.T) {
	dir := t.TempDir()
	_, addr := startKafka(t, kfake.SeedTopics(3, tDelivery, tBounce, tDeferred))
	sp := openSpool(t, dir)
	defer sp.Close()
	const n = 200
	commitKafkaEvents(t, sp, 0, n)
	want := map[string][]byte{} // event id → JSON
	evs, err := sp.ReadOutbox(0, n+1)
	if err != nil || len(evs) != n {
		t.Fatalf("outbox: %d events, %v", len(evs), err)
	}
	for _, e := range evs {
		var id struct {
			EventID string `json:"event_id"`
		}
		if err := json.Unmarshal(e.JSON, &id); err != nil {
			t.Fatal(err)
		}
		want[id.EventID] = e.JSON
	}
	reg := prometheus.NewRegistry()
	log := slog.New(slog.NewTextHandler(&logBuf{}, nil))
	ks := newKafkaSink(t, addr, dir, reg, log, nil)
	runExporter(t, sp, []Sink{ks}, reg, log)

	g := readGroup(t, addr, "records", tDelivery, tBounce, tDeferred)
	tu.WaitFor(t, "every event on the delivery topic, the bounces and deferrals on theirs", func() bool {
		return g.count(tDelivery) == n && g.count(tBounce) == n/4 && g.count(tDeferred) == n/4
	})
	for _, r := range g.records() {
		w, ok := want[r.ev.EventID]
		if !ok {
			t.Fatalf("unexpected event %s on %s", r.ev.EventID, r.topic)
		}
		if !bytes.Equal(r.value, w) {
			t.Errorf("value differs from the event JSON:\n got %s\nwant %s", r.value, w)
		}
		if r.key != r.ev.MessageID {
			t.Errorf("key %q, want the message id %q", r.key, r.ev.MessageID)
		}
		wantH := map[string]string{"event_type": r.ev.Type, "schema_version": "1", "content-type": "application/json"}
		if fmt.Sprint(r.headers) != fmt.Sprint(wantH) {
			t.Errorf("headers %v, want %v", r.headers, wantH)
		}
		switch r.topic {
		case tBounce:
			if r.ev.Type != pipeline.EventBounced {
				t.Errorf("%s event on the bounce topic", r.ev.Type)
			}
		case tDeferred:
			if r.ev.Type != pipeline.EventDeferred {
				t.Errorf("%s event on the deferred route", r.ev.Type)
			}
		}
	}
	checkOrder(t, g.records(), tDelivery)
	if got := testutil.ToFloat64(ks.dead.WithLabelValues(KafkaSinkName)); got != 0 {
		t.Errorf("dead letters = %v, want 0", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "dead.jsonl")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dead-letter file exists: %v", err)
	}
}

// TestKafkaTopicsFor: types limits what is published; the bounce topic
// carries the bounce types; a route adds a topic.
func TestKafkaTopicsFor(t *testing.T) {
	ks, err := NewKafka(KafkaOptions{Brokers: []string{"127.0.0.1:1"}, Topic: "d", BounceTopic: "b", DeadLetter: "x",
		Routes: map[string]string{"delivered": "ok"}, Types: []string{"delivered", "bounced", "rejected"}})
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	for typ, want := range map[string]string{
		"delivered": "[d ok]", "bounced": "[d b]", "rejected": "[d b]", "received": "[]", "deferred": "[]",
	} {
		ts, _ := ks.topicsFor(typ)
		if got := fmt.Sprint(ts); got != want {
			t.Errorf("%s → %s, want %s", typ, got, want)
		}
	}
}

// freePort returns a loopback port nobody listens on now.
func freePort(t testing.TB) int {
	_, port, _ := net.SplitHostPort(tu.FreeAddr(t))
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestKafkaBrokerRestart: the broker stops for the middle of the run and
// starts again on the same address with its data; nothing is lost, order
// per message holds, and the file sink keeps up meanwhile.
func TestKafkaBrokerRestart(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	data := filepath.Join(dir, "kafka-data")
	opts := []kfake.Opt{kfake.NumBrokers(1), kfake.Ports(port), kfake.DataDir(data), kfake.SeedTopics(3, tDelivery, tBounce, tDeferred)}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatal(err)
	}
	addr := c.ListenAddrs()[0]
	sp := openSpool(t, dir)
	defer sp.Close()
	reg := prometheus.NewRegistry()
	logs := &logBuf{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	fs, err := OpenFile(filepath.Join(dir, "events.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	ks := newKafkaSink(t, addr, dir, reg, log, nil)
	ex := runExporter(t, sp, []Sink{fs, ks}, reg, log)

	commitKafkaEvents(t, sp, 0, 100)
	tu.WaitFor(t, "the first 100 events published", func() bool { n, _ := ex.Lag(KafkaSinkName); return n == 0 })
	c.Close()
	commitKafkaEvents(t, sp, 100, 300)
	tu.WaitFor(t, "the file sink to keep up while Kafka is down", func() bool { n, _ := ex.Lag(fs.Name()); return n == 0 })
	tu.WaitFor(t, "the exporter to log the outage", func() bool { return strings.Contains(logs.String(), "event export failed; retrying") })
	if n, _ := ex.Lag(KafkaSinkName); n == 0 {
		t.Fatal("the Kafka sink has no backlog while the broker is down")
	}
	if lines := countLines(t, filepath.Join(dir, "events.jsonl")); lines != 300 {
		t.Errorf("events file has %d lines, want 300", lines)
	}
	c2, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	commitKafkaEvents(t, sp, 300, 400)
	tu.WaitFor(t, "the backlog to drain", func() bool { n, _ := ex.Lag(KafkaSinkName); return n == 0 })
	g := readGroup(t, addr, "restart", tDelivery)
	tu.WaitFor(t, "all 400 events on the delivery topic", func() bool { return g.count(tDelivery) == 400 })
	checkOrder(t, g.records(), tDelivery)
	if !strings.Contains(logs.String(), "event export resumed") {
		t.Error("no log line says the export resumed")
	}
}

func countLines(t testing.TB, path string) int {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	for s := bufio.NewScanner(f); s.Scan(); {
		n++
	}
	return n
}

// TestKafkaWrongCredentials: a wrong SASL password is a clear, retried
// error: logged with what to check, counted, and the events are kept
// until the credentials are right.
func TestKafkaWrongCredentials(t *testing.T) {
	dir := t.TempDir()
	_, addr := startKafka(t, kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-512", "sluice", "right"),
		kfake.SeedTopics(1, tDelivery, tBounce, tDeferred))
	sp := openSpool(t, dir)
	defer sp.Close()
	commitKafkaEvents(t, sp, 0, 20)
	reg := prometheus.NewRegistry()
	logs := &logBuf{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	mech, err := KafkaSASL("scram-sha-512", "sluice", "wrong")
	if err != nil {
		t.Fatal(err)
	}
	ks := newKafkaSink(t, addr, dir, reg, log, func(o *KafkaOptions) { o.SASL = mech })
	ex := runExporter(t, sp, []Sink{ks}, reg, log)
	defer func() {
		if t.Failed() {
			t.Log(logs.String())
		}
	}()
	tu.WaitFor(t, "an export error logged with a hint about the credentials", func() bool {
		return strings.Contains(logs.String(), "check kafka.sasl username, password")
	})
	tu.WaitFor(t, "the failure counted", func() bool {
		return testutil.ToFloat64(ex.failures.WithLabelValues(KafkaSinkName)) > 0
	})
	if n, _ := ex.Lag(KafkaSinkName); n != 20 {
		t.Errorf("lag %d, want all 20 events kept", n)
	}
	if err := reg.Register(ex.AgeCollector()); err != nil {
		t.Fatal(err)
	}
	if age := testutil.ToFloat64(ex.AgeCollector()); age <= 0 {
		t.Errorf("sluice_event_consumer_lag_seconds = %v while the events wait, want > 0", age)
	}
	if testutil.ToFloat64(ks.dead.WithLabelValues(KafkaSinkName)) != 0 {
		t.Error("events dead-lettered on an authentication failure")
	}
	// The right credentials: the same outbox drains.
	good, _ := KafkaSASL("scram-sha-512", "sluice", "right")
	ks2 := newKafkaSink(t, addr, dir, nil, log, func(o *KafkaOptions) { o.SASL = good })
	ex2 := runExporter(t, sp, []Sink{ks2}, nil, log)
	tu.WaitFor(t, "the events published with the right password", func() bool { n, _ := ex2.Lag(KafkaSinkName); return n == 0 })
	if age := testutil.ToFloat64(ex2.AgeCollector()); age != 0 {
		t.Errorf("sluice_event_consumer_lag_seconds = %v with nothing waiting, want 0", age)
	}
}

// TestKafkaMissingTopic: a missing topic fails the batch with a clear
// error while within missing_topic_wait (the events are kept), then its
// events are dead-lettered, counted and logged; the other topics get
// theirs.
func TestKafkaMissingTopic(t *testing.T) {
	dir := t.TempDir()
	_, addr := startKafka(t, kfake.SeedTopics(2, tDelivery, tDeferred)) // no bounce topic
	sp := openSpool(t, dir)
	defer sp.Close()
	commitKafkaEvents(t, sp, 0, 40)
	reg := prometheus.NewRegistry()
	logs := &logBuf{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	ks := newKafkaSink(t, addr, dir, reg, log, func(o *KafkaOptions) { o.MissingTopicWait = 3 * time.Second })
	ex := runExporter(t, sp, []Sink{ks}, reg, log)
	tu.WaitFor(t, "the missing topic logged", func() bool {
		return strings.Contains(logs.String(), "topic "+tBounce+" does not exist: create it")
	})
	if n, _ := ex.Lag(KafkaSinkName); n != 40 {
		t.Errorf("lag %d within the wait, want the 40 events kept", n)
	}
	tu.WaitFor(t, "the events dead-lettered after the wait", func() bool { n, _ := ex.Lag(KafkaSinkName); return n == 0 })
	if got := testutil.ToFloat64(ks.dead.WithLabelValues(KafkaSinkName)); got != 10 {
		t.Errorf("dead letters = %v, want the 10 bounced events", got)
	}
	checkDeadLetters(t, filepath.Join(dir, "dead.jsonl"), 10, "missing for more than")
	if !strings.Contains(logs.String(), "written to the dead-letter file") {
		t.Error("no log line for the dead letters")
	}
	g := readGroup(t, addr, "missing", tDelivery)
	tu.WaitFor(t, "all 40 events on the delivery topic", func() bool { return g.count(tDelivery) == 40 })
}

func checkDeadLetters(t *testing.T, path string, want int, reason string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != want {
		t.Fatalf("%d dead letters, want %d:\n%s", len(lines), want, b)
	}
	for _, l := range lines {
		var d struct {
			Reason string `json:"reason"`
			Event  struct {
				EventID string `json:"event_id"`
			} `json:"event"`
		}
		if err := json.Unmarshal([]byte(l), &d); err != nil || d.Event.EventID == "" || !strings.Contains(d.Reason, reason) {
			t.Errorf("dead letter %s: %v (want reason %q and the event)", l, err, reason)
		}
	}
}

// TestKafkaTooLarge: a record larger than max_message_bytes is
// dead-lettered; the rest of the batch is published.
func TestKafkaTooLarge(t *testing.T) {
	dir := t.TempDir()
	_, addr := startKafka(t, kfake.SeedTopics(1, tDelivery, tBounce, tDeferred))
	sp := openSpool(t, dir)
	defer sp.Close()
	commitKafkaEvents(t, sp, 0, 5)
	b := sp.NewBatch()
	b.AddEvent(&pipeline.Event{Type: pipeline.EventDelivered, MessageID: "big", Attempt: 5,
		Metadata: map[string]string{"blob": strings.Repeat("x", 8000)}})
	if err := b.Commit(false); err != nil {
		t.Fatal(err)
	}
	commitKafkaEvents(t, sp, 6, 10)
	reg := prometheus.NewRegistry()
	log := slog.New(slog.NewTextHandler(&logBuf{}, nil))
	ks := newKafkaSink(t, addr, dir, reg, log, func(o *KafkaOptions) { o.MaxMessageBytes = 4096 })
	ex := runExporter(t, sp, []Sink{ks}, reg, log)
	tu.WaitFor(t, "the outbox drained", func() bool { n, _ := ex.Lag(KafkaSinkName); return n == 0 })
	checkDeadLetters(t, filepath.Join(dir, "dead.jsonl"), 1, "larger than max_message_bytes")
	g := readGroup(t, addr, "large", tDelivery)
	tu.WaitFor(t, "the 9 other events on the delivery topic", func() bool { return g.count(tDelivery) == 9 })
	for _, r := range g.records() {
		if r.key == "big" {
			t.Error("the too-large event was published")
		}
	}
}

// TestBacklogCheck: Check refuses only with tempfail and only while the
// backlog is over budget; Watch logs going over and coming back.
func TestBacklogCheck(t *testing.T) {
	var mu sync.Mutex
	lag := uint64(0)
	setLag := func(n uint64) { mu.Lock(); lag = n; mu.Unlock() }
	logs := &logBuf{}
	b := &Backlog{Max: 10, Tempfail: true, Sink: KafkaSinkName, Logger: slog.New(slog.NewTextHandler(logs, nil)),
		Lag: func() uint64 { mu.Lock(); defer mu.Unlock(); return lag }}
	if err := b.Check(); err != nil {
		t.Errorf("empty backlog: %v", err)
	}
	setLag(10)
	if err := b.Check(); err != nil {
		t.Errorf("backlog at the budget: %v", err)
	}
	setLag(11)
	if err := b.Check(); err != ErrBacklogFull {
		t.Errorf("backlog over budget: %v, want ErrBacklogFull", err)
	}
	accept := &Backlog{Max: 10, Lag: b.Lag}
	if err := accept.Check(); err != nil {
		t.Errorf("on_backlog_full = accept refused: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); b.Watch(ctx, time.Millisecond) }()
	tu.WaitFor(t, "the over-budget error log", func() bool { return strings.Contains(logs.String(), "event backlog over budget") })
	setLag(3)
	tu.WaitFor(t, "the back-under-budget log", func() bool { return strings.Contains(logs.String(), "event backlog back under budget") })
	cancel()
	<-done
	if n := strings.Count(logs.String(), "event backlog over budget"); n != 1 {
		t.Errorf("%d over-budget lines in a few ms, want 1 (rate-limited)", n)
	}
}

// TestKafkaLeaderChange: with three brokers, every partition's leader
// moves to another broker in the middle of the run; the sink follows
// (retrying from its cursor if a batch hits the old leader) and nothing
// is lost, order per message kept.
func TestKafkaLeaderChange(t *testing.T) {
	dir := t.TempDir()
	c, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.SeedTopics(3, tDelivery, tBounce, tDeferred))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	addr := c.ListenAddrs()[0]
	sp := openSpool(t, dir)
	defer sp.Close()
	log := slog.New(slog.NewTextHandler(&logBuf{}, nil))
	ks := newKafkaSink(t, addr, dir, nil, log, nil)
	ex := runExporter(t, sp, []Sink{ks}, nil, log)
	commitKafkaEvents(t, sp, 0, 100)
	tu.WaitFor(t, "the first events published", func() bool { n, _ := ex.Lag(KafkaSinkName); return n == 0 })
	for _, topic := range []string{tDelivery, tBounce, tDeferred} {
		for p := int32(0); p < 3; p++ {
			to := (c.LeaderFor(topic, p) + 1) % 3
			if err := c.MoveTopicPartition(topic, p, to); err != nil {
				t.Fatal(err)
			}
		}
	}
	commitKafkaEvents(t, sp, 100, 300)
	tu.WaitFor(t, "the rest published after the leader change", func() bool { n, _ := ex.Lag(KafkaSinkName); return n == 0 })
	g := readGroup(t, addr, "leaders", tDelivery)
	tu.WaitFor(t, "all 300 events on the delivery topic", func() bool { return g.count(tDelivery) == 300 })
	checkOrder(t, g.records(), tDelivery)
}

// TestKafkaTLSAndSASLPlain: a broker on TLS with SASL PLAIN; the sink
// trusts it through kafka.tls.ca (a PEM file) and publishes. A sink
// that does not trust the certificate fails with the TLS error and keeps
// the events.
func TestKafkaTLSAndSASLPlain(t *testing.T) {
	dir := t.TempDir()
	cert := tu.SelfSignedCert(t, "kafka.test", "127.0.0.1")
	_, addr := startKafka(t, kfake.TLS(cert.TLS), kfake.EnableSASL(), kfake.Superuser("PLAIN", "sluice", "secret"),
		kfake.SeedTopics(1, tDelivery, tBounce, tDeferred))
	sp := openSpool(t, dir)
	defer sp.Close()
	commitKafkaEvents(t, sp, 0, 20)
	logs := &logBuf{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	mech, err := KafkaSASL("plain", "sluice", "secret")
	if err != nil {
		t.Fatal(err)
	}
	// Not trusted: the system roots do not know the self-signed CA.
	untrusted, err := (&config.ClientTLS{ServerName: "kafka.test"}).Config("kafka.tls")
	if err != nil {
		t.Fatal(err)
	}
	bad := newKafkaSink(t, addr, dir, nil, log, func(o *KafkaOptions) { o.TLS, o.SASL = untrusted, mech })
	exBad := runExporter(t, sp, []Sink{bad}, nil, log)
	tu.WaitFor(t, "the certificate error logged", func() bool { return strings.Contains(logs.String(), "certificate") })
	if n, _ := exBad.Lag(KafkaSinkName); n != 20 {
		t.Errorf("lag %d with an untrusted broker, want the 20 events kept", n)
	}
	trusted, err := (&config.ClientTLS{CA: cert.CertFile, ServerName: "kafka.test"}).Config("kafka.tls")
	if err != nil {
		t.Fatal(err)
	}
	ks := newKafkaSink(t, addr, dir, nil, log, func(o *KafkaOptions) { o.TLS, o.SASL = trusted, mech })
	ex := runExporter(t, sp, []Sink{ks}, nil, log)
	tu.WaitFor(t, "the events published over TLS", func() bool { n, _ := ex.Lag(KafkaSinkName); return n == 0 })
	if _, err := (&config.ClientTLS{CA: filepath.Join(dir, "nope.pem")}).Config("kafka.tls"); err == nil || !strings.Contains(err.Error(), "kafka.tls.ca") {
		t.Errorf("a missing CA file: %v", err)
	}
	if _, err := KafkaSASL("gssapi", "u", "p"); err == nil {
		t.Error("an unknown SASL mechanism was accepted")
	}
}

// TestKafkaBrokerRefusesTooLarge: the broker's message.max.bytes is
// below the sink's max_message_bytes. The broker refuses the whole
// produce batch holding the large record; the sink sends the refused
// records again one by one, so only the large one is dead-lettered and
// its neighbours on the partition are published.
func TestKafkaBrokerRefusesTooLarge(t *testing.T) {
	dir := t.TempDir()
	_, addr := startKafka(t, kfake.BrokerConfigs(map[string]string{"message.max.bytes": "6000"}),
		kfake.SeedTopics(1, tDelivery, tBounce, tDeferred))
	sp := openSpool(t, dir)
	defer sp.Close()
	commitKafkaEvents(t, sp, 0, 5)
	b := sp.NewBatch()
	b.AddEvent(&pipeline.Event{Type: pipeline.EventDelivered, MessageID: "big", Attempt: 5,
		Metadata: map[string]string{"blob": strings.Repeat("x", 8000)}})
	if err := b.Commit(false); err != nil {
		t.Fatal(err)
	}
	commitKafkaEvents(t, sp, 6, 10)
	reg := prometheus.NewRegistry()
	log := slog.New(slog.NewTextHandler(&logBuf{}, nil))
	ks := newKafkaSink(t, addr, dir, reg, log, nil)
	ex := runExporter(t, sp, []Sink{ks}, reg, log)
	tu.WaitFor(t, "the outbox drained", func() bool { n, _ := ex.Lag(KafkaSinkName); return n == 0 })
	checkDeadLetters(t, filepath.Join(dir, "dead.jsonl"), 1, "Message Size Too Large")
	g := readGroup(t, addr, "broker-large", tDelivery)
	tu.WaitFor(t, "the 9 other events on the delivery topic", func() bool { return g.count(tDelivery) == 9 })
}
