package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/sluice-mta/sluice/pipeline"
)

const (
	kDelivery = "sluice.delivery"
	kBounce   = "sluice.bounce"
)

// kafkaBroker starts an in-process Kafka-protocol broker with the two
// topics (3 partitions each).
func kafkaBroker(t *testing.T) (*kfake.Cluster, string) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, kDelivery, kBounce))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, c.ListenAddrs()[0]
}

// newKafkaEnv is newEnv with the Kafka sink configured next to the file
// (and the queue lifetime of more).
func newKafkaEnv(t *testing.T, broker string, more map[string]string) *env {
	o := map[string]string{
		`sluice.events { file = "{{EVENTS}}" }`: fmt.Sprintf(`sluice.events { file = "{{EVENTS}}", kafka = {
  brokers = { %q }, topic = %q, bounce_topic = %q, batch_timeout = "2ms",
} }`, broker, kDelivery, kBounce),
	}
	for k, v := range more {
		o[k] = v
	}
	return newEnv(t, o)
}

// kRecord is one record a consumer group read.
type kRecord struct {
	topic, key, typ string
	ev              pipeline.Event
}

// kafkaGroup reads both topics as a consumer group from the start, in the
// background, until the test ends.
type kafkaGroup struct {
	mu   sync.Mutex
	recs []kRecord
	bad  []string
}

func readTopics(t *testing.T, broker, group string) *kafkaGroup {
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: []string{broker}, GroupID: group, GroupTopics: []string{kDelivery, kBounce},
		StartOffset: kafka.FirstOffset, MaxBytes: 10 << 20, MaxWait: 50 * time.Millisecond,
		HeartbeatInterval: 100 * time.Millisecond, ReadBackoffMax: 200 * time.Millisecond,
	})
	ctx, cancel := context.WithCancel(context.Background())
	g := &kafkaGroup{}
	done := make(chan struct{})
	go func() {
		defer close(done)
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
			rec := kRecord{topic: m.Topic, key: string(m.Key)}
			for _, h := range m.Headers {
				if h.Key == "event_type" {
					rec.typ = string(h.Value)
				}
			}
			g.mu.Lock()
			if err := json.Unmarshal(m.Value, &rec.ev); err != nil {
				g.bad = append(g.bad, fmt.Sprintf("%s: %v", m.Value, err))
			}
			g.recs = append(g.recs, rec)
			g.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return g
}

func (g *kafkaGroup) records() []kRecord {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]kRecord(nil), g.recs...)
}

// ids returns the distinct event ids read on topic, and the records
// read there in all (duplicates included).
func (g *kafkaGroup) ids(topic string) (map[string]bool, int) {
	ids, n := map[string]bool{}, 0
	for _, r := range g.records() {
		if r.topic == topic {
			ids[r.ev.EventID] = true
			n++
		}
	}
	return ids, n
}

var bounceTypes = map[string]bool{"bounced": true, "expired": true, "rejected": true, "suppressed": true,
	"suppression_added": true, "suppression_removed": true}

// checkKafkaMatchesFile waits until the delivery topic holds exactly the
// events of the events file, and the bounce topic exactly its bounce
// types (by event_id), then checks each record's key and header and the
// order per message.
func checkKafkaMatchesFile(t *testing.T, r *relayProc, g *kafkaGroup) []pipeline.Event {
	t.Helper()
	same := func(a, b map[string]bool) bool {
		if len(a) != len(b) {
			return false
		}
		for k := range a {
			if !b[k] {
				return false
			}
		}
		return true
	}
	// The relay may still be working (a message accepted just before a
	// kill is delivered after the restart): read both sides afresh until
	// they agree.
	var evs []pipeline.Event
	var all, bounces, wantAll, wantBounce map[string]bool
	deadline := time.Now().Add(30 * time.Second)
	for {
		evs = r.readEvents()
		wantAll, wantBounce = map[string]bool{}, map[string]bool{}
		for _, e := range evs {
			wantAll[e.EventID] = true
			if bounceTypes[e.Type] {
				wantBounce[e.EventID] = true
			}
		}
		all, _ = g.ids(kDelivery)
		bounces, _ = g.ids(kBounce)
		if same(all, wantAll) && same(bounces, wantBounce) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the topics never held exactly the file's events: %d/%d on %s, %d/%d on %s", len(all), len(wantAll), kDelivery, len(bounces), len(wantBounce), kBounce)
		}
		time.Sleep(50 * time.Millisecond)
	}
	g.mu.Lock()
	if len(g.bad) > 0 {
		t.Errorf("undecodable records: %v", g.bad)
	}
	g.mu.Unlock()
	// Order per message: the delivery topic, duplicates dropped, has each
	// message's events in the file's order.
	fileOrder := map[string][]string{}
	inFile := map[string]bool{} // the file is at least once too
	for _, e := range evs {
		if !inFile[e.EventID] {
			inFile[e.EventID] = true
			fileOrder[e.MessageID] = append(fileOrder[e.MessageID], e.EventID)
		}
	}
	topicOrder := map[string][]string{}
	seen := map[string]bool{}
	for _, rec := range g.records() {
		if rec.key != rec.ev.MessageID || rec.typ != rec.ev.Type {
			t.Errorf("record key %q / event_type %q, want %q / %q", rec.key, rec.typ, rec.ev.MessageID, rec.ev.Type)
		}
		if rec.topic != kDelivery || seen[rec.ev.EventID] {
			continue
		}
		seen[rec.ev.EventID] = true
		topicOrder[rec.key] = append(topicOrder[rec.key], rec.ev.EventID)
	}
	for id, want := range fileOrder {
		if got := topicOrder[id]; strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("message %s: events on Kafka in order %v, in the file %v", id, got, want)
		}
	}
	return evs
}

// TestKafkaMixedOutcomes: delivered, deferred then delivered, bounced
// and expired (with their DSNs) and rejected, read back by a consumer group from both
// topics: exactly the file's events by event_id, in order per message.
func TestKafkaMixedOutcomes(t *testing.T) {
	_, broker := kafkaBroker(t)
	e := newKafkaEnv(t, broker, map[string]string{"{{LIFETIME}}": "3s"})
	var deferOnce sync.Once
	e.smart.rcptReply = func(rcpt string) error {
		var err error
		deferOnce.Do(func() { err = smtpErr(451, [3]int{4, 2, 0}, "try later") })
		return err
	}
	e.mx.rcptReply = func(rcpt string) error {
		if strings.HasPrefix(rcpt, "gone@") {
			return smtpErr(550, [3]int{5, 1, 1}, "no such user")
		}
		if strings.HasPrefix(rcpt, "full@") {
			return smtpErr(452, [3]int{4, 2, 2}, "mailbox full")
		}
		return nil
	}
	e.relay.start()
	g := readTopics(t, broker, "mixed")
	if err := sendMail(e.relay.smtp, "app@sender.test", []string{"bob@mx.test", "carol@smart.test", "gone@mx.test", "full@mx.test"},
		msgData("app@sender.test", "bob@mx.test", "kafka-mixed")); err != nil {
		t.Fatal(err)
	}
	if err := sendMail(e.relay.smtp, "app@sender.test", []string{"loop@local.test"}, msgData("app@sender.test", "loop@local.test", "kafka-rej")); err == nil {
		t.Fatal("the looping recipient was accepted")
	}
	evs := e.relay.waitEvents("every outcome", func(evs []pipeline.Event) bool {
		return countType(evs, "delivered", "bob@mx.test") == 1 && countType(evs, "deferred", "carol@smart.test") == 1 &&
			countType(evs, "delivered", "carol@smart.test") == 1 && countType(evs, "bounced", "gone@mx.test") == 1 &&
			countType(evs, "rejected", "loop@local.test") == 1 && countType(evs, "expired", "full@mx.test") == 1 &&
			countType(evs, "delivered", "app@sender.test") == 2 // the DSNs
	})
	_ = evs
	evs = checkKafkaMatchesFile(t, e.relay, g)
	bounces, _ := g.ids(kBounce)
	for _, ev := range evs {
		if bounces[ev.EventID] != bounceTypes[ev.Type] {
			t.Errorf("%s event for %s: on the bounce topic = %v", ev.Type, ev.Recipient, bounces[ev.EventID])
		}
	}
}

// TestKafkaKill9BetweenPublishAndCursor: the relay is killed while the
// broker handles its produce request (the records are stored, the relay
// never sees the ack, so its cursor did not move). After a restart every
// event of the file is on Kafka: duplicates possible, loss never.
func TestKafkaKill9BetweenPublishAndCursor(t *testing.T) {
	c, broker := kafkaBroker(t)
	e := newKafkaEnv(t, broker, nil)
	e.relay.start()
	g := readTopics(t, broker, "kill9")
	accepted := map[int]bool{}
	killing, killed := make(chan struct{}), make(chan struct{})
	send := func(from, to int) {
		for i := from; i < to; i++ {
			rcpt := fmt.Sprintf("u%d@mx.test", i)
			err := sendMail(e.relay.smtp, "app@sender.test", []string{rcpt}, msgData("app@sender.test", rcpt, fmt.Sprintf("k%d", i)))
			select {
			case <-killing:
				return // this one and the rest may have been refused
			default:
			}
			if err != nil {
				t.Fatal(err)
			}
			accepted[i] = true
		}
	}
	send(0, 5)
	waitFor(t, "the first events on Kafka", func() bool { ids, _ := g.ids(kDelivery); return len(ids) >= 10 })
	var once sync.Once
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		// Kill the relay before the broker stores this batch and answers:
		// the records land, the ack never arrives.
		c.DropControl()
		once.Do(func() {
			close(killing)
			e.relay.kill9()
			close(killed)
		})
		return nil, nil, false
	})
	send(5, 10)
	select {
	case <-killed:
	case <-time.After(30 * time.Second):
		t.Fatal("no produce request from the relay")
	}
	e.relay.start()
	send(10, 15)
	e.relay.waitEvents("every message delivered", func(evs []pipeline.Event) bool {
		for i := range accepted {
			if countType(evs, "delivered", fmt.Sprintf("u%d@mx.test", i)) == 0 {
				return false
			}
		}
		return true
	})
	checkKafkaMatchesFile(t, e.relay, g)
	ids, n := g.ids(kDelivery)
	t.Logf("%d events on %s, %d records (%d duplicates)", len(ids), kDelivery, n, n-len(ids))
	if n == len(ids) {
		t.Error("no duplicate: the batch the broker stored while the relay died was not published again (or the kill missed the window)")
	}
}

// TestKafkaBacklogTempfail: with on_backlog_full = "tempfail" and Kafka
// unreachable, new mail is refused with 451 4.3.0 once the backlog is
// over max_backlog, and the log says so.
func TestKafkaBacklogTempfail(t *testing.T) {
	down := freePort(t) // nothing listens there
	e := newEnv(t, map[string]string{
		`sluice.events { file = "{{EVENTS}}" }`: fmt.Sprintf(`sluice.events { file = "{{EVENTS}}", kafka = {
  brokers = { %q }, max_backlog = 4, on_backlog_full = "tempfail",
} }`, down),
	})
	e.relay.start()
	var refused string
	for i := 0; i < 20 && refused == ""; i++ {
		rcpt := fmt.Sprintf("u%d@mx.test", i)
		err := sendMail(e.relay.smtp, "app@sender.test", []string{rcpt}, msgData("app@sender.test", rcpt, fmt.Sprintf("b%d", i)))
		if err != nil {
			refused = err.Error()
		}
	}
	if !strings.HasPrefix(refused, "451") || !strings.Contains(refused, "4.3.0 Event backlog full") {
		t.Fatalf("no 451 4.3.0 refusal once the backlog is over budget; last error %q", refused)
	}
	waitFor(t, "the loud log line", func() bool {
		return strings.Contains(e.relay.logText(), "event backlog over budget")
	})
	// The refused transaction is recorded, and delivery went on.
	e.relay.waitEvents("a rejected event with 451 4.3.0", func(evs []pipeline.Event) bool {
		for _, ev := range evs {
			if ev.Type == "rejected" && ev.Response != nil && ev.Response.Code == 451 && ev.Response.Enhanced == "4.3.0" {
				return true
			}
		}
		return false
	})
	waitFor(t, "delivery unaffected by the Kafka outage", func() bool { return e.mx.count() >= 2 })
}

// TestKafkaBacklogTempfailHTTP: the same budget over HTTP answers 503
// (unavailable, SMTP 451 4.3.0 in the body) with Retry-After.
func TestKafkaBacklogTempfailHTTP(t *testing.T) {
	h := newHTTPEnv(t)
	src, err := os.ReadFile(h.relay.cfg)
	if err != nil {
		t.Fatal(err)
	}
	events := fmt.Sprintf("sluice.events { file = %q }", h.relay.events)
	if !strings.Contains(string(src), events) {
		t.Fatalf("no %s in the HTTP test config", events)
	}
	cfg := strings.Replace(string(src), events, fmt.Sprintf(`sluice.events { file = %q, kafka = {
  brokers = { %q }, max_backlog = 4, on_backlog_full = "tempfail",
} }`, h.relay.events, freePort(t)), 1)
	if err := os.WriteFile(h.relay.cfg, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	h.start()
	key, _ := h.createKey("acme", "send")
	var last httpResp
	for i := 0; i < 20; i++ {
		last = h.do("POST", "/v1/messages", key, []byte(fmt.Sprintf(`{"from":"app@sender.test","to":"u%d@smart.test","text":"x"}`, i)), nil)
		if last.status != 200 && last.status != 202 {
			break
		}
	}
	e := last.apiError().Error
	if last.status != 503 || e.Code != "unavailable" || e.SMTPCode != 451 || e.Enhanced != "4.3.0" || last.header.Get("Retry-After") == "" {
		t.Fatalf("over budget: %s (Retry-After %q), want 503 unavailable 451 4.3.0", last, last.header.Get("Retry-After"))
	}
}
