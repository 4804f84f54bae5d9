// Command kafka-consumer reads Sluice's bounce topic as a member of a
// Kafka consumer group (kafka-go) and prints each bounce once: Sluice
// publishes at least once, so a record can arrive twice (after a crash or
// a retried batch); this consumer drops a repeat by its event_id.
//
// Deduplication keeps the last -window event ids (FIFO; 100,000 by
// default, about 4 MB): a repeat comes within at most one batch (1,000
// events) of the original per partition, so a window far larger than that
// catches them while memory stays bounded.
//
//	go run ./examples/kafka-consumer -brokers 127.0.0.1:9092 -topic sluice.bounce -group bounces
//
// Offsets are committed after each record is handled (at least once here
// too): a real consumer would update its suppression list or CRM there.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/segmentio/kafka-go"
)

// Bounce is the part of a Sluice event (schema 1) this consumer uses.
type Bounce struct {
	EventID     string `json:"event_id"`
	Type        string `json:"type"`
	Time        string `json:"time"`
	MessageID   string `json:"message_id"`
	Recipient   string `json:"recipient"`
	BounceClass string `json:"bounce_class"`
	Response    *struct {
		Code     int    `json:"code"`
		Enhanced string `json:"enhanced"`
		Text     string `json:"text"`
	} `json:"response"`
}

// Dedup remembers the last n event ids (FIFO eviction). Not safe for
// concurrent use.
type Dedup struct {
	seen map[string]struct{}
	ring []string
	next int
}

// NewDedup returns a Dedup holding at most n ids (n ≥ 1).
func NewDedup(n int) *Dedup {
	return &Dedup{seen: make(map[string]struct{}, n), ring: make([]string, n)}
}

// First reports whether id is new, and remembers it.
func (d *Dedup) First(id string) bool {
	if _, ok := d.seen[id]; ok {
		return false
	}
	if old := d.ring[d.next]; old != "" {
		delete(d.seen, old)
	}
	d.ring[d.next] = id
	d.next = (d.next + 1) % len(d.ring)
	d.seen[id] = struct{}{}
	return true
}

// Consume reads r until ctx ends and calls handle once per event id; it
// commits each record's offset after handle returns.
func Consume(ctx context.Context, r *kafka.Reader, d *Dedup, handle func(Bounce)) error {
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		var b Bounce
		if err := json.Unmarshal(m.Value, &b); err != nil || b.EventID == "" {
			log.Printf("skipping an undecodable record at %s/%d@%d: %v", m.Topic, m.Partition, m.Offset, err)
		} else if d.First(b.EventID) {
			handle(b)
		}
		if err := r.CommitMessages(ctx, m); err != nil && ctx.Err() == nil {
			return err
		}
	}
}

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "comma-separated bootstrap brokers")
	topic := flag.String("topic", "sluice.bounce", "the bounce topic (sluice.events { kafka = { bounce_topic } })")
	group := flag.String("group", "sluice-bounces", "consumer group id")
	window := flag.Int("window", 100000, "event ids remembered for deduplication")
	flag.Parse()
	if *window < 1 {
		log.Fatal("-window must be at least 1")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: strings.Split(*brokers, ","), GroupID: *group, Topic: *topic,
		StartOffset: kafka.FirstOffset, MaxBytes: 10 << 20,
	})
	defer r.Close()
	err := Consume(ctx, r, NewDedup(*window), func(b Bounce) { printBounce(os.Stdout, b) })
	if err != nil {
		log.Fatalf("reading %s: %v", *topic, err)
	}
}

func printBounce(w io.Writer, b Bounce) {
	code := ""
	if b.Response != nil {
		code = fmt.Sprintf("%d %s %s", b.Response.Code, b.Response.Enhanced, b.Response.Text)
	}
	fmt.Fprintf(w, "%s %s %s %s class=%s %s\n", b.Time, b.Type, b.MessageID, b.Recipient, b.BounceClass, code)
}
