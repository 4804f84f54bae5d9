package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/queue"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestQueueOpsEndToEnd is issue 20's queue control test, against the
// real binary and its CLI: 100 messages deferred by the smarthost, the
// destination paused (and still paused after a restart), the queue
// listed (mailq style and by queue), 10 recipients bounced by recipient
// (their DSNs reach the sender's MX), one message held, the rest retried
// now (nothing delivered while paused), resume → 89 delivered, release
// and retry the held one → 90; every admin action is an event naming the
// key, and the bounced events name it too.
func TestQueueOpsEndToEnd(t *testing.T) {
	h, key, keyID := newQueueEnv(t, "")
	name := "relay:127.0.0.1:" + h.smart.port()
	cli := func(args ...string) string { t.Helper(); return h.queueCLI(key, args...) }
	queueInfo := func() queue.QueueInfo {
		var l struct{ Queues []queue.QueueInfo }
		if err := json.Unmarshal([]byte(cli("list", "--json")), &l); err != nil {
			t.Fatal(err)
		}
		for _, q := range l.Queues {
			if q.Name == name {
				return q
			}
		}
		return queue.QueueInfo{}
	}

	h.smart.mu.Lock()
	h.smart.rcptReply = func(string) error { return smtpErr(451, [3]int{4, 2, 1}, "try later") }
	h.smart.mu.Unlock()
	ids := map[string]string{} // recipient → message id
	for i := 0; i < 100; i++ {
		to := fmt.Sprintf("ok%02d@smart.test", i)
		if i%10 == 0 {
			to = fmt.Sprintf("bad%02d@smart.test", i)
		}
		ids[to] = h.postMessage(key, to).ID
	}
	waitFor(t, "100 deferred", func() bool { return queueInfo().Waiting == 100 })
	h.smart.mu.Lock()
	h.smart.rcptReply = nil
	h.smart.mu.Unlock()
	if out := cli("pause", name); !strings.Contains(out, name+": paused") {
		t.Fatalf("pause printed %q", out)
	}

	// A restart keeps the pause (and the deferred mail).
	h.relay.stop()
	h.start()
	if q := queueInfo(); !q.Paused || q.Waiting != 100 {
		t.Fatalf("after a restart: %+v", q)
	}

	// Listing: mailq style, and the queue's messages.
	out := cli()
	if !strings.Contains(out, "-Queue ID-") || !strings.Contains(out, "in 100 Requests.") ||
		!strings.Contains(out, "(451 4.2.1 try later)") || !strings.Contains(out, "app@sender.test") {
		t.Fatalf("sluice queue printed:\n%s", out)
	}
	out = cli("show", name, "--all", "--limit", "30", "--state", "deferred")
	if n := strings.Count(out, "@smart.test"); n != 100 {
		t.Fatalf("show listed %d recipients, want 100:\n%s", n, out)
	}

	// Bounce the 10 bad ones, each by its recipient.
	for to := range ids {
		if strings.HasPrefix(to, "bad") {
			if out := cli("bounce", "--rcpt", to); !strings.Contains(out, "1 recipients bounced") {
				t.Fatalf("bounce %s printed %q", to, out)
			}
		}
	}
	held := ids["ok01@smart.test"]
	if out := cli("hold", "--message", held); !strings.Contains(out, "1 recipients held") {
		t.Fatalf("hold printed %q", out)
	}
	if out := cli("show", "--state", "held"); !strings.Contains(out, "ok01@smart.test") || strings.Count(out, "@smart.test") != 1 {
		t.Fatalf("show --state held printed:\n%s", out)
	}
	if out := cli("retry", name); !strings.Contains(out, name+": 89 recipients made ready now") {
		t.Fatalf("retry printed %q", out)
	}
	waitFor(t, "the 10 DSNs at the sender's MX", func() bool { return h.mx.count() == 10 })
	if q := queueInfo(); q.Ready != 89 || q.Held != 1 || q.Waiting != 0 || h.smart.count() != 0 {
		t.Fatalf("paused, retried: %+v, %d delivered", q, h.smart.count())
	}
	cli("resume", name)
	waitFor(t, "89 delivered after resume", func() bool { return h.smart.count() == 89 })
	cli("release", "--message", held)
	cli("retry", "--message", held)
	waitFor(t, "90 delivered", func() bool { return h.smart.count() == 90 })
	if out := cli(); !strings.Contains(out, "Mail queue is empty") {
		t.Fatalf("mailq after delivery:\n%s", out)
	}

	for _, m := range h.mx.messages() {
		if len(m.Rcpts) != 1 || m.Rcpts[0] != "app@sender.test" || !strings.Contains(string(m.Data), "@smart.test") ||
			!strings.Contains(string(m.Data), "mail administrator") {
			t.Fatalf("DSN to the sender: %v\n%s", m.Rcpts, m.Data)
		}
	}
	evs := h.relay.waitEvents("every outcome and admin action", func(evs []pipeline.Event) bool {
		return countType(evs, pipeline.EventDelivered, "") >= 100 && countType(evs, pipeline.EventQueueReleased, "") == 1 &&
			countType(evs, pipeline.EventQueueRetried, "") == 2
	})
	bounced := 0
	admin := map[string]int{}
	for _, ev := range evs {
		switch {
		case ev.Type == pipeline.EventBounced:
			bounced++
			if !strings.HasPrefix(ev.Recipient, "bad") || ev.Metadata[queue.AdminByKey] != keyID {
				t.Errorf("bounced event: %+v", ev)
			}
		case strings.HasPrefix(ev.Type, "queue_"):
			admin[ev.Type]++
			if ev.Metadata["by"] != keyID {
				t.Errorf("%s event names %q, want the key %s", ev.Type, ev.Metadata["by"], keyID)
			}
		}
	}
	// 90 to the smarthost, 10 DSNs to the sender's MX.
	if d := countType(evs, pipeline.EventDelivered, ""); bounced != 10 || d != 100 {
		t.Fatalf("%d bounced, %d delivered (want 10 and 90 + 10 DSNs)", bounced, d)
	}
	want := map[string]int{pipeline.EventQueuePaused: 1, pipeline.EventQueueBounced: 10, pipeline.EventQueueHeld: 1,
		pipeline.EventQueueRetried: 2, pipeline.EventQueueResumed: 1, pipeline.EventQueueReleased: 1}
	for typ, n := range want {
		if admin[typ] != n {
			t.Errorf("%d %s events, want %d (all: %v)", admin[typ], typ, n, admin)
		}
	}
}
