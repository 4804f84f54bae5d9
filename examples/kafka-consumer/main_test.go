package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
)

func TestDedupWindow(t *testing.T) {
	d := NewDedup(2)
	for i, c := range []struct {
		id    string
		first bool
	}{{"a", true}, {"a", false}, {"b", true}, {"a", false}, {"c", true}, {"a", true}, {"c", false}} {
		if got := d.First(c.id); got != c.first {
			t.Errorf("step %d: First(%q) = %v, want %v", i, c.id, got, c.first)
		}
	}
}

// TestConsumeDropsDuplicates: against an in-process broker, a consumer
// group member reads the bounce topic, where one event was published
// twice (as after a retried batch), and handles every event once.
func TestConsumeDropsDuplicates(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, "sluice.bounce"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	addr := c.ListenAddrs()[0]
	w := &kafka.Writer{Addr: kafka.TCP(addr), Topic: "sluice.bounce", Balancer: &kafka.Hash{}, BatchTimeout: time.Millisecond}
	defer w.Close()
	var msgs []kafka.Message
	for i := range 5 {
		v := fmt.Sprintf(`{"schema":1,"event_id":"e%d","type":"bounced","message_id":"m%d","recipient":"r%d@example.org","response":{"code":550,"enhanced":"5.1.1","text":"no such user"}}`, i, i, i)
		msgs = append(msgs, kafka.Message{Key: []byte(fmt.Sprintf("m%d", i)), Value: []byte(v)})
	}
	msgs = append(msgs, msgs[2]) // a duplicate
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, GroupID: "g", Topic: "sluice.bounce",
		StartOffset: kafka.FirstOffset, MaxBytes: 1 << 20, MaxWait: 50 * time.Millisecond, HeartbeatInterval: 100 * time.Millisecond})
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var mu sync.Mutex
	var out bytes.Buffer
	got := map[string]int{}
	errc := make(chan error, 1)
	go func() {
		errc <- Consume(ctx, r, NewDedup(100), func(b Bounce) {
			mu.Lock()
			defer mu.Unlock()
			got[b.EventID]++
			printBounce(&out, b)
		})
	}()
	// Wait until the group has committed all six records: each was
	// handled (or dropped as a repeat) before its commit.
	cl := &kafka.Client{Addr: kafka.TCP(addr)}
	for {
		res, err := cl.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: "g", Topics: map[string][]int{"sluice.bounce": {0, 1}}})
		var committed int64
		if err == nil {
			for _, p := range res.Topics["sluice.bounce"] {
				committed += max(p.CommittedOffset, 0)
			}
		}
		if committed == 6 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the group committed %d of 6 records (%v)", committed, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for id, n := range got {
		if n != 1 {
			t.Errorf("event %s handled %d times", id, n)
		}
	}
	if !strings.Contains(out.String(), "bounced m2 r2@example.org class= 550 5.1.1 no such user") {
		t.Errorf("output:\n%s", out.String())
	}
}
