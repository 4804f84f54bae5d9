package main

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// queueConfig relays smart.test to the smarthost sink and delivers
// everything else by MX (sender.test's MX is the mx sink, where DSNs go),
// with a first backoff of an hour: a deferred recipient is delivered
// within a test only when retried by hand.
const queueConfig = `
local sluice = require("sluice")
sluice.node { name = "queue-e2e-1", hostname = "relay.e2e.test" }
sluice.spool { path = "{{SPOOL}}" }
sluice.events { file = "{{EVENTS}}" }
sluice.listen_smtp { addr = "{{SMTP}}" }
sluice.listen_http { addr = "{{HTTP}}" }
sluice.delivery { resolver = "{{DNS}}", port = {{MXPORT}}, retry = { initial = "1h", max = "1h", jitter = 0 }, idle_timeout = "1s" }
sluice.stage("routing", {
  on_route = function(msg, rcpt)
    if rcpt.domain == "smart.test" then
      return sluice.route.relay { host = "127.0.0.1", port = {{SMARTPORT}}, tls = "none" }
    end
    return sluice.route.mx()
  end,
})
`

// queueCLI runs `sluice queue ARGS` with key; a non-zero exit fails the
// test.
func (h *httpEnv) queueCLI(key string, args ...string) string {
	h.t.Helper()
	out, errs, code := h.apiCLI(key, "queue", args...)
	if code != 0 {
		h.t.Fatalf("sluice queue %v: exit %d\n%s%s", args, code, out, errs)
	}
	return out
}

// newQueueEnv starts a relay on queueConfig (with extra appended) and
// returns it with an API key with the admin scope and its id.
func newQueueEnv(t *testing.T, extra string) (h *httpEnv, key, keyID string) {
	return newQueueEnvWith(t, extra, nil)
}

// newQueueEnvWith is newQueueEnv calling before (when not nil) with the
// spool's directory before the relay starts.
func newQueueEnvWith(t *testing.T, extra string, before func(spoolDir string)) (h *httpEnv, key, keyID string) {
	h = &httpEnv{t: t, dns: dnstest.NewServer(t), mx: newSink(t), smart: newSink(t)}
	h.dns.AddMX("sender.test", 10, "mx1.sender.test")
	h.dns.AddA("mx1.sender.test", "127.0.0.1")
	httpAddr := freePort(t)
	cfg := strings.NewReplacer("{{HTTP}}", httpAddr, "{{DNS}}", h.dns.Addr(), "{{MXPORT}}", h.mx.port(),
		"{{SMARTPORT}}", h.smart.port()).Replace(queueConfig + extra)
	h.relay = newRelay(t, t.TempDir(), cfg)
	if before != nil {
		before(filepath.Join(h.relay.dir, "spool"))
	}
	h.base = "http://" + httpAddr
	h.client = &http.Client{Timeout: 30 * time.Second}
	t.Cleanup(h.client.CloseIdleConnections)
	h.start()
	key, keyID = h.createKey("acme", "send", "admin")
	return h, key, keyID
}

type cliQueue struct {
	Name        string     `json:"name"`
	Ready       int        `json:"ready"`
	Waiting     int        `json:"waiting"`
	Paused      bool       `json:"paused"`
	NextAttempt *time.Time `json:"next_attempt"`
}

// TestQueueCLIEndToEnd, against the real binary: `sluice queue pause`
// holds a destination while mail queues for it (list and show see it, the
// smarthost gets nothing), resume delivers it all; a deferred message with
// an hour of backoff is delivered at once after `sluice queue flush`; the
// events file records each action with the admin key's id.
func TestQueueCLIEndToEnd(t *testing.T) {
	h, key, keyID := newQueueEnv(t, "")
	name := "relay:127.0.0.1:" + h.smart.port()
	cli := func(args ...string) string { t.Helper(); return h.queueCLI(key, args...) }
	queues := func() map[string]cliQueue {
		var l struct{ Queues []cliQueue }
		if err := json.Unmarshal([]byte(cli("list", "--json")), &l); err != nil {
			t.Fatal(err)
		}
		m := map[string]cliQueue{}
		for _, q := range l.Queues {
			m[q.Name] = q
		}
		return m
	}

	if out := cli("pause", name); !strings.Contains(out, name+": paused") {
		t.Fatalf("pause printed %q", out)
	}
	for _, to := range []string{"a@smart.test", "b@smart.test", "c@smart.test"} {
		h.postMessage(key, to)
	}
	if q := queues()[name]; !q.Paused || q.Ready != 3 {
		t.Fatalf("paused queue: %+v", q)
	}
	if out := cli("list"); !strings.Contains(out, name) || !strings.Contains(out, "QUEUE") {
		t.Fatalf("list printed:\n%s", out)
	}
	out := cli("show", name, "--limit", "2", "--all")
	for _, to := range []string{"a@smart.test", "b@smart.test", "c@smart.test"} {
		if !strings.Contains(out, to) {
			t.Fatalf("show does not list %s:\n%s", to, out)
		}
	}
	if h.smart.count() != 0 {
		t.Fatalf("the paused destination got %d messages", h.smart.count())
	}
	if _, errs, code := h.apiCLI(key, "queue", "pause"); code != 2 || !strings.Contains(errs, "name the QUEUE") {
		t.Errorf("pause without a queue: exit %d %s", code, errs)
	}
	cli("resume", name)
	waitFor(t, "the paused mail delivered after resume", func() bool { return h.smart.count() == 3 })

	// A deferred message waits an hour, unless flushed.
	h.smart.mu.Lock()
	h.smart.rcptReply = func(string) error { return smtpErr(451, [3]int{4, 2, 1}, "try later") }
	h.smart.mu.Unlock()
	h.postMessage(key, "late@smart.test")
	waitFor(t, "the message deferred", func() bool { return queues()[name].Waiting == 1 })
	if q := queues()[name]; q.NextAttempt == nil || time.Until(*q.NextAttempt) < 30*time.Minute {
		t.Fatalf("deferred queue: %+v", q)
	}
	h.smart.mu.Lock()
	h.smart.rcptReply = nil
	h.smart.mu.Unlock()
	if out := cli("flush"); !strings.Contains(out, "every queue: 1 recipients made ready now") {
		t.Fatalf("flush printed %q", out)
	}
	waitFor(t, "the deferred message delivered after flush", func() bool { return h.smart.count() == 4 })

	evs := h.relay.waitEvents("the admin events", func(evs []pipeline.Event) bool {
		return countType(evs, pipeline.EventQueuePaused, "") == 1 && countType(evs, pipeline.EventQueueResumed, "") == 1 &&
			countType(evs, pipeline.EventQueueRetried, "") == 1
	})
	for _, ev := range evs {
		if strings.HasPrefix(ev.Type, "queue_") {
			testutil.ValidateEventValue(t, &ev)
			if ev.Metadata["by"] != keyID {
				t.Errorf("%s event names %q, want the key %s", ev.Type, ev.Metadata["by"], keyID)
			}
		}
	}
}
