package main

import (
	"flag"

	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/pipeline"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden event streams in testdata/golden")

// goldenConfig: SMTP (loopback may relay) and HTTP on one relay; one Lua
// stage refuses "blocked.*" at on_rcpt and "noroute.*" at on_route,
// discards "discard me", and stamps every message, bounces included.
const goldenConfig = `
local sluice = require("sluice")
sluice.node { name = "golden", hostname = "relay.golden.test" }
sluice.spool { path = "{{SPOOL}}" }
sluice.events { file = "{{EVENTS}}" }
sluice.listen_smtp { addr = "{{SMTP}}", relay_networks = { "127.0.0.1/32" } }
sluice.listen_http { addr = "{{HTTP}}" }
sluice.delivery {
  resolver = "{{DNS}}",
  port = {{MXPORT}},
  retry = { initial = "200ms", max = "200ms", jitter = 0 },
  queue_lifetime = "3s",
  idle_timeout = "1s",
}
sluice.lua_options { timeout = "2s" }
sluice.stage("policy", {
  on_rcpt = function(txn, rcpt)
    if rcpt.local_part:match("^blocked") then
      return sluice.reject(550, "5.7.1", "blocked by policy")
    end
  end,
  on_message = function(msg)
    msg:add_header("X-Stamp", msg.conn.source)
    if msg:header("Subject") == "discard me" then
      return sluice.discard("test discard")
    end
  end,
  on_route = function(msg, rcpt)
    if rcpt.local_part:match("^noroute") then
      return sluice.reject(550, "5.1.1", "no route")
    end
    return sluice.route.mx()
  end,
})
`

// goldenScenario is one message with one recipient, sent over each source.
type goldenScenario struct {
	name    string
	local   string // recipient local part prefix (".smtp" or ".http" is added)
	domain  string
	subject string
	dsn     bool // a bounce is due: wait for its delivery too
}

var goldenScenarios = []goldenScenario{
	{name: "delivered", local: "ok", domain: "mx.test"},
	{name: "deferred_then_delivered", local: "retry", domain: "mx.test"},
	{name: "bounced", local: "bad", domain: "mx.test", dsn: true},
	{name: "bounced_no_mx_host", local: "x", domain: "nomx.test", dsn: true},
	{name: "refused_at_on_route", local: "noroute", domain: "mx.test"},
	{name: "refused_at_on_rcpt", local: "blocked", domain: "mx.test"},
	{name: "discarded", local: "discard", domain: "mx.test", subject: "discard me"},
	{name: "expired", local: "exp", domain: "down.test", dsn: true},
}

// TestGoldenEventStreams: for each scenario, SMTP and HTTP produce the
// same sequence of event types per recipient (and for the bounce, when
// one is due), and it is the committed one (testdata/golden; rewrite with
// go test -run TestGoldenEventStreams -update). Runs of one type (the
// deferrals before an expiry) count once.
func TestGoldenEventStreams(t *testing.T) {
	dns := dnstest.NewServer(t)
	mx := newSink(t)
	dns.AddMX("mx.test", 10, "mx1.mx.test")
	dns.AddA("mx1.mx.test", "127.0.0.1")
	dns.AddMX("sender.test", 10, "mx1.mx.test")
	dns.AddMX("down.test", 10, "mx1.mx.test")
	dns.AddMX("nomx.test", 10, "mx.gone.test") // the MX host does not exist
	var seenMu sync.Mutex
	seen := map[string]bool{}
	mx.rcptReply = func(rcpt string) error {
		switch {
		case strings.HasPrefix(rcpt, "bad."):
			return smtpErr(550, [3]int{5, 1, 1}, "user unknown")
		case strings.HasSuffix(rcpt, "@down.test"):
			return smtpErr(451, [3]int{4, 3, 0}, "try later")
		case strings.HasPrefix(rcpt, "retry."):
			seenMu.Lock()
			defer seenMu.Unlock()
			if !seen[rcpt] {
				seen[rcpt] = true
				return smtpErr(451, [3]int{4, 2, 1}, "greylisted")
			}
		}
		return nil
	}
	httpAddr := freePort(t)
	cfg := strings.NewReplacer("{{HTTP}}", httpAddr, "{{DNS}}", dns.Addr(), "{{MXPORT}}", mx.port()).Replace(goldenConfig)
	h := &httpEnv{t: t, dns: dns, mx: mx, relay: newRelay(t, t.TempDir(), cfg), base: "http://" + httpAddr,
		client: &http.Client{Timeout: 30 * time.Second}}
	h.start()
	key, _ := h.createKey("golden")

	for _, sc := range goldenScenarios {
		subject := sc.subject
		if subject == "" {
			subject = sc.name
		}
		// SMTP: a raw session, so a refusal at RCPT ends the transaction
		// as a client would (RSET) instead of failing the test.
		rcpt := sc.local + ".smtp@" + sc.domain
		s := dialRaw(t, h.relay.smtp)
		s.cmd("EHLO client.test")
		s.cmd("MAIL FROM:<app@sender.test>")
		if r := s.cmd("RCPT TO:<" + rcpt + ">"); strings.HasPrefix(r, "250") {
			if r := s.cmd("DATA"); !strings.HasPrefix(r, "354") {
				t.Fatalf("%s: DATA: %s", sc.name, r)
			}
			s.send(msgData("app@sender.test", rcpt, subject) + ".\r\n")
			s.reply()
		} else {
			s.cmd("RSET")
		}
		s.cmd("QUIT")
		// HTTP.
		body := httpJSON(t, map[string]any{"from": "app@sender.test", "to": []string{sc.local + ".http@" + sc.domain},
			"subject": subject, "text": "hello " + sc.name})
		h.do("POST", "/v1/messages", key, body, nil)
	}

	// Wait until every scenario has reached its end (and its bounce was
	// delivered), then compare.
	var evs []pipeline.Event
	h.relay.waitEvents("every scenario settled", func(got []pipeline.Event) bool {
		evs = got
		for _, sc := range goldenScenarios {
			for _, src := range []string{"smtp", "http"} {
				if !settled(got, sc.local+"."+src+"@"+sc.domain, sc.dsn) {
					return false
				}
			}
		}
		return true
	})
	for _, sc := range goldenScenarios {
		t.Run(sc.name, func(t *testing.T) {
			smtpStream := stream(evs, sc.local+".smtp@"+sc.domain)
			httpStream := stream(evs, sc.local+".http@"+sc.domain)
			if smtpStream != httpStream {
				t.Errorf("SMTP and HTTP differ:\nSMTP:\n%sHTTP:\n%s", smtpStream, httpStream)
			}
			path := filepath.Join("testdata", "golden", sc.name+".events")
			if *updateGolden {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(smtpStream), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if smtpStream != string(want) {
				t.Errorf("event stream:\n%swant (%s):\n%s", smtpStream, path, want)
			}
		})
	}

	// The bounces passed on_message like any message, and their
	// diagnostics tell a remote reply ("smtp;") from what Sluice decided
	// itself ("x-sluice;", the MX host that does not exist).
	for _, c := range []struct{ rcpt, diag, not string }{
		{"bad.smtp@mx.test", "Diagnostic-Code: smtp; 550 5.1.1 user unknown", "x-sluice;"},
		{"bad.http@mx.test", "Diagnostic-Code: smtp; 550 5.1.1 user unknown", "x-sluice;"},
		{"x.smtp@nomx.test", "Diagnostic-Code: x-sluice; 550 5.4.4", "smtp;"},
		{"x.http@nomx.test", "Diagnostic-Code: x-sluice; 550 5.4.4", "smtp;"},
	} {
		var dsn string
		for _, m := range mx.messages() {
			if m.From == "" && strings.Contains(string(m.Data), "Final-Recipient: rfc822; "+c.rcpt) {
				dsn = httpNormNL(string(m.Data))
			}
		}
		if dsn == "" {
			t.Errorf("no DSN for %s reached the sender's MX", c.rcpt)
			continue
		}
		if !strings.Contains(dsn, "X-Stamp: dsn") {
			t.Errorf("the DSN for %s did not pass on_message:\n%s", c.rcpt, dsn)
		}
		if !strings.Contains(dsn, c.diag) || strings.Contains(dsn, c.not) {
			t.Errorf("the DSN for %s: want %q and no %q:\n%s", c.rcpt, c.diag, c.not, dsn)
		}
	}
}

var terminal = map[string]bool{pipeline.EventDelivered: true, pipeline.EventBounced: true, pipeline.EventExpired: true,
	pipeline.EventRejected: true, pipeline.EventDiscarded: true}

// settled reports whether rcpt reached a final state and, with dsn, its
// bounce was delivered.
func settled(evs []pipeline.Event, rcpt string, dsn bool) bool {
	id := ""
	for _, e := range evs {
		if e.Recipient == rcpt && terminal[e.Type] {
			id = e.MessageID
		}
	}
	if id == "" {
		return false
	}
	if !dsn {
		return true
	}
	for _, e := range evs {
		if e.Metadata["bounce_of"] == id && e.Type == pipeline.EventDelivered {
			return true
		}
	}
	return false
}

// stream is the normalised event stream of the message sent to rcpt:
// "rcpt: types" and, for its bounce, "dsn: types", one type per run.
func stream(evs []pipeline.Event, rcpt string) string {
	var id string
	var own []string
	for _, e := range evs {
		if e.Recipient == rcpt {
			id = e.MessageID
			own = appendRun(own, e.Type)
		}
	}
	var dsn []string
	for _, e := range evs {
		if id != "" && e.Metadata["bounce_of"] == id {
			dsn = appendRun(dsn, e.Type)
		}
	}
	// A transaction-level event (no recipient) of this message, if any.
	var txn []string
	for _, e := range evs {
		if id != "" && e.MessageID == id && e.Recipient == "" {
			txn = appendRun(txn, e.Type)
		}
	}
	lines := []string{"rcpt: " + strings.Join(own, " ")}
	if len(txn) > 0 {
		lines = append(lines, "transaction: "+strings.Join(txn, " "))
	}
	if len(dsn) > 0 {
		lines = append(lines, "dsn: "+strings.Join(dsn, " "))
	}
	sort.Strings(lines[1:])
	return strings.Join(lines, "\n") + "\n"
}

func appendRun(types []string, t string) []string {
	if len(types) > 0 && types[len(types)-1] == t {
		return types
	}
	return append(types, t)
}
