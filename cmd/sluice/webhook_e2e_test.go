package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

const webhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

// webhookConfig: everything is relayed to the smarthost sink; three
// webhooks: "all" (every event), "bounces" (bounced only), and "gone"
// (a port nothing listens on, dead-lettered after one second).
const webhookConfig = `
local sluice = require("sluice")
sluice.node { name = "wh-1", hostname = "relay.wh.test" }
sluice.spool { path = "{{SPOOL}}" }
sluice.events { file = "{{EVENTS}}", webhooks = {
  { name = "all", url = "{{ALL}}", secret = sluice.env("SLUICE_TEST_WH_SECRET") },
  { name = "bounces", url = "{{BOUNCES}}", secret = sluice.env("SLUICE_TEST_WH_SECRET"), types = { "bounced" }, timeout = "5s" },
  { name = "gone", url = "{{GONE}}", secret = sluice.env("SLUICE_TEST_WH_SECRET"), dead_letter_after = "1s", dead_letter = "{{DEAD}}" },
} }
sluice.listen_smtp { addr = "{{SMTP}}", relay_networks = { "127.0.0.1/32" } }
sluice.delivery { retry = { initial = "1s", max = "1s", jitter = 0 }, idle_timeout = "1s" }
sluice.stage("routing", {
  on_route = function(msg, rcpt)
    return sluice.route.relay { host = "127.0.0.1", port = {{SMARTPORT}}, tls = "none" }
  end,
})
`

// hookReceiver is a webhook endpoint: it verifies each request with
// testutil.VerifyWebhook (independent of the signing library), checks the
// body against the event schema, and answers status (0: 200).
type hookReceiver struct {
	status atomic.Int32
	mu     sync.Mutex
	got    []pipeline.Event // accepted, in arrival order
	bad    []string
	refuse int
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	defer h.mu.Unlock()
	var ev pipeline.Event
	switch err := testutil.VerifyWebhook(webhookSecret, r.Header, body); {
	case err != nil:
		h.bad = append(h.bad, "signature: "+err.Error())
	case testutil.CheckEvent(body) != nil:
		h.bad = append(h.bad, fmt.Sprintf("schema: %v: %s", testutil.CheckEvent(body), body))
	case json.Unmarshal(body, &ev) != nil || ev.EventID != r.Header.Get("Webhook-Id"):
		h.bad = append(h.bad, "webhook-id is not the event_id: "+string(body))
	default:
		if s := h.status.Load(); s != 0 {
			h.refuse++
			w.WriteHeader(int(s))
			return
		}
		h.got = append(h.got, ev)
		return
	}
	w.WriteHeader(http.StatusBadRequest)
}

func (h *hookReceiver) events() []pipeline.Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]pipeline.Event(nil), h.got...)
}

func startReceiver(t *testing.T, h *hookReceiver) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String() + "/hook"
}

// The real binary POSTs every event to the webhook, signed and valid
// against the schema; the "all" endpoint, refusing (503) at first, gets
// every event of the events file once it answers, each message's in file
// order; the filtered endpoint gets the bounces only; the unreachable one
// dead-letters every event.
func TestWebhookEndToEnd(t *testing.T) {
	t.Setenv("SLUICE_TEST_WH_SECRET", webhookSecret)
	smart := newSink(t)
	smart.rcptReply = func(rcpt string) error {
		if strings.HasPrefix(rcpt, "nobody@") {
			return smtpErr(550, [3]int{5, 1, 1}, "no such user")
		}
		return nil
	}
	all, bounces := &hookReceiver{}, &hookReceiver{}
	all.status.Store(http.StatusServiceUnavailable)
	dir := t.TempDir()
	dead := filepath.Join(dir, "dead", "gone.jsonl")
	body := strings.NewReplacer("{{SMARTPORT}}", smart.port(), "{{ALL}}", startReceiver(t, all),
		"{{BOUNCES}}", startReceiver(t, bounces), "{{GONE}}", "http://"+freePort(t)+"/hook", "{{DEAD}}", dead).Replace(webhookConfig)
	r := newRelay(t, dir, body)
	r.start()

	for i := range 3 {
		to := []string{fmt.Sprintf("bob%d@dest.test", i), fmt.Sprintf("carol%d@dest.test", i)}
		if i == 1 {
			to = append(to, "nobody@dest.test")
		}
		if err := sendMail(r.smtp, "app@dest.test", to, msgData("app@dest.test", to[0], fmt.Sprintf("wh-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	// 6 recipients delivered, 1 bounced, and the bounce's own DSN delivered.
	want := r.waitEvents("the deliveries, the bounce and its DSN", func(evs []pipeline.Event) bool {
		return countType(evs, pipeline.EventDelivered, "") == 6+1 && countType(evs, pipeline.EventBounced, "") == 1
	})
	waitFor(t, "503s at the refusing endpoint", func() bool { all.mu.Lock(); defer all.mu.Unlock(); return all.refuse >= 3 })
	if n := len(all.events()); n != 0 {
		t.Fatalf("the refusing endpoint accepted %d events", n)
	}
	all.status.Store(0)
	waitFor(t, "every event at the endpoint", func() bool { return len(all.events()) >= len(want) })
	waitFor(t, "the bounce at the bounces endpoint", func() bool { return len(bounces.events()) >= 1 })
	want = r.readEvents() // nothing more happens after the DSN's delivery
	for name, h := range map[string]*hookReceiver{"all": all, "bounces": bounces} {
		h.mu.Lock()
		if len(h.bad) > 0 {
			t.Errorf("%s: %d bad requests, e.g. %s", name, len(h.bad), h.bad[0])
		}
		h.mu.Unlock()
	}

	// "all" got exactly the file's events, each once, each message's in
	// the file's (outbox) order.
	got := all.events()
	pos := map[string]int{}
	for i, ev := range got {
		if _, dup := pos[ev.EventID]; dup {
			t.Errorf("event %s %s arrived twice", ev.Type, ev.EventID)
		}
		pos[ev.EventID] = i
	}
	if len(got) != len(want) {
		t.Errorf("endpoint got %d events, the file has %d:\n%s", len(got), len(want), describeEvents(got))
	}
	lastPos := map[string]int{}
	for _, ev := range want {
		p, ok := pos[ev.EventID]
		if !ok {
			t.Errorf("event %s %s %s is not at the endpoint", ev.Type, ev.MessageID, ev.Recipient)
			continue
		}
		if lp, seen := lastPos[ev.MessageID]; seen && p < lp {
			t.Errorf("message %s: %s for %s arrived before an earlier event of the message", ev.MessageID, ev.Type, ev.Recipient)
		}
		lastPos[ev.MessageID] = p
	}
	// "bounces" got the bounce only.
	if b := bounces.events(); len(b) != 1 || b[0].Type != pipeline.EventBounced || b[0].Recipient != "nobody@dest.test" {
		t.Errorf("bounces endpoint got:\n%s", describeEvents(b))
	}

	// "gone" dead-lettered every event, with the reason.
	waitFor(t, "every event in the dead-letter file", func() bool { return len(readDeadLetters(t, dead)) >= len(want) })
	deadIDs := map[string]bool{}
	for _, l := range readDeadLetters(t, dead) {
		if l.Consumer != "webhook:gone" || !strings.Contains(l.Reason, "connection refused") {
			t.Errorf("dead letter %+v", l)
		}
		testutil.ValidateEvent(t, l.Event)
		var ev pipeline.Event
		json.Unmarshal(l.Event, &ev)
		deadIDs[ev.EventID] = true
	}
	for _, ev := range want {
		if !deadIDs[ev.EventID] {
			t.Errorf("event %s %s is not in the dead-letter file", ev.Type, ev.EventID)
		}
	}
	if !strings.Contains(r.logText(), "event dead-lettered") {
		t.Error("no log line for the dead letters")
	}
}

type deadLetterLine struct {
	Consumer string          `json:"consumer"`
	Reason   string          `json:"reason"`
	Event    json.RawMessage `json:"event"`
}

func readDeadLetters(t *testing.T, path string) []deadLetterLine {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []deadLetterLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l deadLetterLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("dead-letter line %q: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	return out
}
