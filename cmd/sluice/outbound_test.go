package main

// End-to-end tests of the delivery side of issue 13: mail loops, 8-bit
// content and SMTPUTF8 towards next hops that do or do not offer the
// extensions, and the next hop's reply in the delivered event.

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// outboundConfig: MX delivery on {{MXPORT}}; seven.test and eight.test go
// to strict hops by relay route, sender.test (bounces) to a sink.
const outboundConfig = `
local sluice = require("sluice")
sluice.node { name = "out-1", hostname = "relay.out.test" }
sluice.spool { path = "{{SPOOL}}" }
sluice.events { file = "{{EVENTS}}" }
sluice.listen_smtp { addr = "{{SMTP}}", relay_networks = { "127.0.0.1/32" } }
sluice.delivery {
  resolver = "{{DNS}}",
  port = {{MXPORT}},
  retry = { initial = "200ms", max = "200ms", jitter = 0 },
  idle_timeout = "1s",
}
sluice.stage("routing", {
  on_route = function(msg, rcpt)
    if rcpt.domain == "sender.test" then
      return sluice.route.relay { host = "127.0.0.1", port = {{SINKPORT}}, tls = "none" }
    elseif rcpt.domain == "seven.test" then
      return sluice.route.relay { host = "127.0.0.1", port = {{SEVENPORT}}, tls = "none" }
    elseif rcpt.domain == "eight.test" then
      return sluice.route.relay { host = "127.0.0.1", port = {{EIGHTPORT}}, tls = "none" }
    end
    return sluice.route.mx()
  end,
})
`

type outEnv struct {
	dns          *dnstest.Server
	sink         *sink         // bounces
	seven, eight *testutil.Hop // a 7-bit hop, and one with 8BITMIME, SMTPUTF8, DSN
	relay        *relayProc
}

// newOutEnv builds the relay; mxPort "" means the relay's own SMTP port
// (for loops).
func newOutEnv(t *testing.T, mxPort string) *outEnv {
	e := &outEnv{dns: dnstest.NewServer(t), sink: newSink(t),
		seven: testutil.StartHop(t, testutil.HopOptions{Extensions: []string{"PIPELINING", "ENHANCEDSTATUSCODES"}}),
		eight: testutil.StartHop(t, testutil.HopOptions{Extensions: []string{"PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8", "DSN"}}),
	}
	cfg := strings.NewReplacer("{{DNS}}", e.dns.Addr(), "{{SINKPORT}}", e.sink.port(),
		"{{SEVENPORT}}", itoa(e.seven.Port), "{{EIGHTPORT}}", itoa(e.eight.Port)).Replace(outboundConfig)
	if mxPort != "" {
		cfg = strings.ReplaceAll(cfg, "{{MXPORT}}", mxPort)
	}
	e.relay = newRelay(t, t.TempDir(), cfg)
	if mxPort == "" {
		_, self, _ := net.SplitHostPort(e.relay.smtp)
		b, err := os.ReadFile(e.relay.cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(e.relay.cfg, []byte(strings.ReplaceAll(string(b), "{{MXPORT}}", self)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func itoa(n int) string { return strconv.Itoa(n) }

func findEvent(evs []pipeline.Event, typ, rcpt string) *pipeline.Event {
	for i := range evs {
		if evs[i].Type == typ && evs[i].Recipient == rcpt {
			return &evs[i]
		}
	}
	return nil
}

// Issue 13 item 2: the DNS server points loop.test's MX at Sluice itself
// (127.0.0.1 and its own SMTP port). The message is bounced at once with
// 5.4.6, without a single hop, and the sender gets the DSN.
func TestOutboundMXLoop(t *testing.T) {
	e := newOutEnv(t, "")
	e.dns.AddMX("loop.test", 10, "mx.loop.test")
	e.dns.AddA("mx.loop.test", "127.0.0.1")
	e.relay.start()
	if err := sendMail(e.relay.smtp, "app@sender.test", []string{"bob@loop.test"}, msgData("app@sender.test", "bob@loop.test", "loop-1")); err != nil {
		t.Fatal(err)
	}
	evs := e.relay.waitEvents("the bounce", func(evs []pipeline.Event) bool {
		return countType(evs, pipeline.EventBounced, "bob@loop.test") == 1
	})
	ev := findEvent(evs, pipeline.EventBounced, "bob@loop.test")
	if ev.Response.Code != 554 || ev.Response.Enhanced != "5.4.6" || ev.Response.Text != "mail for loop.test loops back to myself" {
		t.Errorf("bounce response %+v", ev.Response)
	}
	waitFor(t, "the DSN at the sender's sink", func() bool { return e.sink.count() == 1 })
	if d := string(e.sink.messages()[0].Data); !strings.Contains(d, "5.4.6") || !strings.Contains(d, "bob@loop.test") {
		t.Errorf("DSN lacks the status or recipient:\n%s", d)
	}
	// Exactly one message was received: the loop never made a hop.
	if n := countType(e.relay.readEvents(), pipeline.EventReceived, "bob@loop.test"); n != 1 {
		t.Errorf("%d received events for bob@loop.test, want 1:\n%s", n, describeEvents(e.relay.readEvents()))
	}
}

// Issue 13 items 3 and 4 and "events carry the reply received": 8-bit
// content reaches an 8BITMIME hop with BODY=8BITMIME and bounces (5.6.3)
// for a 7-bit hop; a non-ASCII recipient reaches an SMTPUTF8 hop with the
// SMTPUTF8 parameter and bounces (5.6.7) for a hop without it; the
// delivered events carry each hop's own reply.
func TestOutbound8BitAndSMTPUTF8(t *testing.T) {
	e := newOutEnv(t, "25")
	e.relay.start()
	// 8-bit in the body only (a UTF-8 header of a message that asked for
	// SMTPUTF8 — net/smtp asks whenever offered — needs SMTPUTF8 instead).
	eight := "From: app@sender.test\r\nSubject: cafe\r\nMessage-ID: <8bit@client.test>\r\n\r\nna\xc3\xafve\r\n"
	if err := sendMail(e.relay.smtp, "app@sender.test", []string{"a@seven.test", "b@eight.test"}, eight); err != nil {
		t.Fatal(err)
	}
	evs := e.relay.waitEvents("both outcomes", func(evs []pipeline.Event) bool {
		return findEvent(evs, pipeline.EventBounced, "a@seven.test") != nil && findEvent(evs, pipeline.EventDelivered, "b@eight.test") != nil
	})
	if r := findEvent(evs, pipeline.EventBounced, "a@seven.test").Response; r.Code != 554 || r.Enhanced != "5.6.3" || !strings.Contains(r.Text, "8BITMIME") {
		t.Errorf("7-bit hop: %+v", r)
	}
	if r := findEvent(evs, pipeline.EventDelivered, "b@eight.test").Response; *r != (pipeline.Response{Code: 250, Enhanced: "2.0.0", Text: "accepted as hop-1"}) {
		t.Errorf("delivered event response %+v, want the hop's own", r)
	}
	if n := len(e.seven.Messages()); n != 0 {
		t.Errorf("the 7-bit hop received %d messages", n)
	}
	m := e.eight.Messages()
	if len(m) != 1 || !strings.Contains(m[0].Mail, " BODY=8BITMIME") || !strings.HasSuffix(string(m[0].Data), eight) {
		t.Fatalf("8BITMIME hop got %+v", m)
	}
	waitFor(t, "the DSN for a@seven.test", func() bool { return e.sink.count() == 1 })
	if d := string(e.sink.messages()[0].Data); !strings.Contains(d, "5.6.3") || !strings.Contains(d, "a@seven.test") {
		t.Errorf("DSN:\n%s", d)
	}

	// A non-ASCII recipient (net/smtp asks for SMTPUTF8 itself).
	ascii := msgData("app@sender.test", "undisclosed-recipients:;", "utf8-1")
	if err := sendMail(e.relay.smtp, "app@sender.test", []string{"jörg@seven.test", "jörg@eight.test"}, ascii); err != nil {
		t.Fatal(err)
	}
	evs = e.relay.waitEvents("both outcomes", func(evs []pipeline.Event) bool {
		return findEvent(evs, pipeline.EventBounced, "jörg@seven.test") != nil && findEvent(evs, pipeline.EventDelivered, "jörg@eight.test") != nil
	})
	if r := findEvent(evs, pipeline.EventBounced, "jörg@seven.test").Response; r.Code != 553 || r.Enhanced != "5.6.7" {
		t.Errorf("hop without SMTPUTF8: %+v", r)
	}
	m = e.eight.Messages()
	if len(m) != 2 || !strings.Contains(m[1].Mail, " SMTPUTF8") || m[1].Rcpts[0] != "RCPT TO:<jörg@eight.test>" {
		t.Fatalf("SMTPUTF8 hop got %+v", m)
	}
	if len(e.seven.Messages()) != 0 {
		t.Error("the hop without SMTPUTF8 got a message")
	}
}
