package main

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-message/mail"

	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/pipeline"
)

// baseConfig: relay networks = loopback; a Lua stage adding a header and
// routing smart.test to the smarthost, everything else via MX.
const baseConfig = `
local sluice = require("sluice")
sluice.node { name = "e2e-1", hostname = "relay.e2e.test" }
sluice.local_domains { "local.test" }
sluice.spool { path = "{{SPOOL}}" }
sluice.events { file = "{{EVENTS}}" }
sluice.listen_smtp {
  addr = "{{SMTP}}",
  relay_networks = { {{RELAYNETS}} },
  max_message_size = "{{MAXSIZE}}",
  max_recipients = 5,
}
sluice.delivery {
  resolver = "{{DNS}}",
  port = {{MXPORT}},
  retry = { initial = "{{RETRY}}", max = "{{RETRY}}", jitter = 0 },
  queue_lifetime = "{{LIFETIME}}",
  idle_timeout = "1s",
}
sluice.lua_options { timeout = "200ms" }
sluice.stage("stamp", {
  on_rcpt = function(txn, rcpt)
    if rcpt.address == "loop@local.test" then
      while true do end
    end
  end,
  on_message = function(msg)
    msg:add_header("X-Sluice-Test", "stamped " .. msg.sender)
    msg:tag("e2e")
    msg:set_meta("order", "1234")
  end,
})
sluice.stage("routing", {
  on_route = function(msg, rcpt)
    if rcpt.domain == "smart.test" then
      return sluice.route.relay { host = "127.0.0.1", port = {{SMARTPORT}}, tls = "none" }
    end
    return sluice.route.mx()
  end,
})
`

type env struct {
	t     *testing.T
	dns   *dnstest.Server
	mx    *sink // MX host for mx.test and sender.test (bounces)
	smart *sink // smarthost
	relay *relayProc
	vars  map[string]string
}

// newEnv builds sinks, DNS and a relay config; call start().
func newEnv(t *testing.T, overrides map[string]string) *env {
	e := &env{t: t, dns: dnstest.NewServer(t), mx: newSink(t), smart: newSink(t)}
	e.dns.AddMX("mx.test", 10, "mx1.mx.test")
	e.dns.AddA("mx1.mx.test", "127.0.0.1")
	e.dns.AddMX("sender.test", 10, "mx1.mx.test")
	e.vars = map[string]string{
		"{{RELAYNETS}}": `"127.0.0.1/32"`,
		"{{MAXSIZE}}":   "64KB",
		"{{DNS}}":       e.dns.Addr(),
		"{{MXPORT}}":    e.mx.port(),
		"{{SMARTPORT}}": e.smart.port(),
		"{{RETRY}}":     "200ms",
		"{{LIFETIME}}":  "1h",
	}
	for k, v := range overrides {
		e.vars[k] = v
	}
	pairs := []string{}
	for k, v := range e.vars {
		pairs = append(pairs, k, v)
	}
	cfg := strings.NewReplacer(pairs...).Replace(baseConfig)
	e.relay = newRelay(t, t.TempDir(), cfg)
	return e
}

func msgData(from, to, subject string) string {
	return "From: " + from + "\r\nTo: " + to + "\r\nSubject: " + subject + "\r\nMessage-ID: <" + subject + "@client.test>\r\n\r\nHello " + subject + "\r\nsecond line\r\n"
}

func TestEndToEndMXAndSmarthost(t *testing.T) {
	e := newEnv(t, nil)
	e.relay.start()
	data := msgData("app@sender.test", "bob@mx.test", "e2e-1")
	if err := sendMail(e.relay.smtp, "app@sender.test", []string{"bob@mx.test", "carol@smart.test"}, data); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both sinks", func() bool { return e.mx.count() == 1 && e.smart.count() == 1 })
	for name, s := range map[string]*sink{"mx": e.mx, "smarthost": e.smart} {
		m := s.messages()[0]
		got := string(m.Data)
		// The exact original bytes follow the trace and stamp headers.
		if !strings.HasSuffix(got, data) {
			t.Errorf("%s: original bytes not preserved:\n%q", name, got)
		}
		hdr := got[:len(got)-len(data)]
		if !strings.Contains(hdr, "X-Sluice-Test: stamped app@sender.test\r\n") || !strings.Contains(hdr, "Received: ") {
			t.Errorf("%s: missing added headers:\n%s", name, hdr)
		}
		if m.From != "app@sender.test" {
			t.Errorf("%s: envelope from %q", name, m.From)
		}
	}
	if r := e.mx.messages()[0].Rcpts; len(r) != 1 || r[0] != "bob@mx.test" {
		t.Errorf("mx rcpts %v", r)
	}
	if r := e.smart.messages()[0].Rcpts; len(r) != 1 || r[0] != "carol@smart.test" {
		t.Errorf("smarthost rcpts %v", r)
	}
	evs := e.relay.waitEvents("delivered events", func(evs []pipeline.Event) bool { return countType(evs, "delivered", "") == 2 })
	for _, rcpt := range []string{"bob@mx.test", "carol@smart.test"} {
		var seq []string
		for _, ev := range evs {
			if ev.Recipient == rcpt {
				seq = append(seq, ev.Type)
				if ev.Sender != "app@sender.test" || ev.Source != "smtp" || ev.Node != "e2e-1" || ev.Metadata["order"] != "1234" || len(ev.Tags) != 1 || ev.Tags[0] != "e2e" || ev.Schema != 1 || ev.EventID == "" {
					t.Errorf("event fields wrong: %+v", ev)
				}
			}
		}
		if strings.Join(seq, ",") != "received,delivered" {
			t.Errorf("%s: events %v, want received,delivered", rcpt, seq)
		}
	}
	for _, ev := range evs {
		if ev.Type == "delivered" && ev.Recipient == "bob@mx.test" {
			if ev.Queue != "mx.test" || ev.Remote == nil || ev.Remote.IP != "127.0.0.1" || ev.Response == nil || ev.Response.Code != 250 {
				t.Errorf("mx delivered event: %+v remote=%+v", ev, ev.Remote)
			}
		}
		if ev.Type == "delivered" && ev.Recipient == "carol@smart.test" && !strings.HasPrefix(ev.Queue, "relay:127.0.0.1:") {
			t.Errorf("smarthost queue %q", ev.Queue)
		}
	}
}

func TestRetryThenDelivered(t *testing.T) {
	e := newEnv(t, nil)
	var mu sync.Mutex
	tries := 0
	e.mx.dataReply = func(m *sinkMsg) error {
		mu.Lock()
		defer mu.Unlock()
		tries++
		if tries <= 2 {
			return smtpErr(451, [3]int{4, 3, 0}, "try again")
		}
		return nil
	}
	e.relay.start()
	if err := sendMail(e.relay.smtp, "app@sender.test", []string{"bob@mx.test"}, msgData("app@sender.test", "bob@mx.test", "retry")); err != nil {
		t.Fatal(err)
	}
	evs := e.relay.waitEvents("delivery", func(evs []pipeline.Event) bool { return countType(evs, "delivered", "bob@mx.test") == 1 })
	var seq []string
	for _, ev := range evs {
		seq = append(seq, fmt.Sprintf("%s/%d", ev.Type, ev.Attempt))
	}
	if got := strings.Join(seq, ","); got != "received/0,deferred/1,deferred/2,delivered/3" {
		t.Fatalf("events %s", got)
	}
	for _, ev := range evs {
		if ev.Type == "deferred" && (ev.Response == nil || ev.Response.Code != 451 || ev.Response.Text != "try again") {
			t.Errorf("deferred response %+v", ev.Response)
		}
	}
	if e.mx.count() != 1 {
		t.Fatalf("sink has %d messages", e.mx.count())
	}
}

func TestPermanentFailureBouncesWithDSN(t *testing.T) {
	e := newEnv(t, nil)
	e.smart.rcptReply = func(rcpt string) error {
		if strings.HasPrefix(rcpt, "nobody@") {
			return smtpErr(550, [3]int{5, 1, 1}, "no such user here")
		}
		return nil
	}
	e.relay.start()
	orig := msgData("app@sender.test", "nobody@smart.test", "bounce-me")
	if err := sendMail(e.relay.smtp, "app@sender.test", []string{"nobody@smart.test", "ok@smart.test"}, orig); err != nil {
		t.Fatal(err)
	}
	// A null-sender message that fails too: it must not bounce.
	if err := sendMail(e.relay.smtp, "", []string{"nobody@smart.test"}, msgData("MAILER-DAEMON@x.test", "nobody@smart.test", "null-sender")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the DSN at the sender's MX", func() bool { return e.mx.count() >= 1 })
	e.relay.waitEvents("both bounces", func(evs []pipeline.Event) bool { return countType(evs, "bounced", "nobody@smart.test") == 2 })
	dsn := e.mx.messages()[0]
	if dsn.From != "" || len(dsn.Rcpts) != 1 || dsn.Rcpts[0] != "app@sender.test" {
		t.Fatalf("DSN envelope from=%q rcpts=%v", dsn.From, dsn.Rcpts)
	}
	mr, err := mail.CreateReader(bytes.NewReader(dsn.Data))
	if err != nil {
		t.Fatal(err)
	}
	ct, params, _ := mr.Header.ContentType()
	if ct != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("DSN content type %s %v", ct, params)
	}
	var parts []string
	var status, headers string
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var pct string
		switch h := p.Header.(type) {
		case *mail.InlineHeader:
			pct, _, _ = h.ContentType()
		case *mail.AttachmentHeader:
			pct, _, _ = h.ContentType()
		}
		parts = append(parts, pct)
		b, _ := io.ReadAll(p.Body)
		switch pct {
		case "message/delivery-status":
			status = string(b)
		case "text/rfc822-headers":
			headers = string(b)
		}
	}
	if len(parts) != 3 || parts[1] != "message/delivery-status" {
		t.Fatalf("DSN parts %v", parts)
	}
	for _, want := range []string{"Final-Recipient: rfc822; nobody@smart.test", "Action: failed", "Status: 5.1.1", "no such user here"} {
		if !strings.Contains(status, want) {
			t.Errorf("delivery-status lacks %q:\n%s", want, status)
		}
	}
	if strings.Contains(status, "ok@smart.test") {
		t.Errorf("the delivered recipient is in the DSN:\n%s", status)
	}
	if !strings.Contains(headers, "Subject: bounce-me") {
		t.Errorf("original headers missing:\n%s", headers)
	}
	// Exactly one DSN: none for the null sender. Give a wrong one time to
	// arrive: the bounce events are already recorded.
	time.Sleep(500 * time.Millisecond)
	if n := e.mx.count(); n != 1 {
		t.Fatalf("MX sink got %d messages; want exactly one DSN", n)
	}
}

func TestNullMXBouncesAtOnceAndDownMXDefers(t *testing.T) {
	e := newEnv(t, nil)
	e.dns.SetNullMX("nullmx.test")
	e.dns.AddMX("down.test", 10, "mx1.down.test")
	e.dns.AddMX("down.test", 20, "mx2.down.test")
	e.dns.AddA("mx1.down.test", "127.0.0.2") // nothing listens on 127.0.0.2:port
	e.dns.AddA("mx2.down.test", "127.0.0.3")
	e.relay.start()
	if err := sendMail(e.relay.smtp, "app@sender.test", []string{"x@nullmx.test", "y@down.test"}, msgData("app@sender.test", "x@nullmx.test", "nullmx")); err != nil {
		t.Fatal(err)
	}
	evs := e.relay.waitEvents("null MX bounce and a deferral", func(evs []pipeline.Event) bool {
		return countType(evs, "bounced", "x@nullmx.test") == 1 && countType(evs, "deferred", "y@down.test") >= 1
	})
	for _, ev := range evs {
		if ev.Type == "bounced" && (ev.Attempt != 1 || ev.Response == nil || ev.Response.Code != 556) {
			t.Errorf("null MX bounce: attempt %d response %+v", ev.Attempt, ev.Response)
		}
		if ev.Type == "deferred" && (ev.Response == nil || ev.Response.Code/100 != 4) {
			t.Errorf("down MX deferral response %+v", ev.Response)
		}
	}
	waitFor(t, "the DSN for the null MX", func() bool { return e.mx.count() == 1 })
}

func TestSMTPPolicyReplies(t *testing.T) {
	e := newEnv(t, map[string]string{"{{RELAYNETS}}": `"10.99.0.0/16"`})
	e.relay.start()
	s := dialRaw(t, e.relay.smtp)
	if r := s.cmd("EHLO client.test"); !strings.HasPrefix(r, "250") {
		t.Fatalf("EHLO: %s", r)
	}
	s.cmd("MAIL FROM:<a@sender.test>")
	if r := s.cmd("RCPT TO:<victim@foreign.test>"); !strings.HasPrefix(r, "550 5.7.1") {
		t.Errorf("open relay! RCPT to a foreign domain from an unauthorised client: %s", r)
	}
	for i := 0; i < 5; i++ {
		if r := s.cmd(fmt.Sprintf("RCPT TO:<u%d@local.test>", i)); !strings.HasPrefix(r, "250") {
			t.Fatalf("local rcpt %d: %s", i, r)
		}
	}
	if r := s.cmd("RCPT TO:<u6@local.test>"); !strings.HasPrefix(r, "452") {
		t.Errorf("too many recipients: %s", r)
	}
	s.cmd("RSET")
	// Oversize: SIZE declared too big is refused at MAIL; data too big at DATA.
	if r := s.cmd("MAIL FROM:<a@sender.test> SIZE=10000000"); !strings.HasPrefix(r, "552") {
		t.Errorf("MAIL SIZE too big: %s", r)
	}
	s.cmd("MAIL FROM:<a@sender.test>")
	s.cmd("RCPT TO:<u@local.test>")
	if r := s.cmd("DATA"); !strings.HasPrefix(r, "354") {
		t.Fatalf("DATA: %s", r)
	}
	big := strings.Repeat(strings.Repeat("x", 70)+"\r\n", 2000) // 144 KB > 64 KB
	s.send("Subject: big\r\n\r\n" + big + ".\r\n")
	if r := s.reply(); !strings.HasPrefix(r, "552") {
		t.Errorf("oversize DATA: %s", r)
	}

	// A Lua infinite loop tempfails within the deadline and the server
	// keeps serving.
	s2 := dialRaw(t, e.relay.smtp)
	s2.cmd("EHLO client.test")
	s2.cmd("MAIL FROM:<a@sender.test>")
	start := time.Now()
	if r := s2.cmd("RCPT TO:<loop@local.test>"); !strings.HasPrefix(r, "451 4.4.5") {
		t.Errorf("Lua infinite loop: %s", r)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the loop took %v to be stopped", d)
	}
	if err := sendMail(e.relay.smtp, "a@sender.test", []string{"after@local.test"}, msgData("a@sender.test", "after@local.test", "after-loop")); err != nil {
		t.Fatalf("server stopped serving after a Lua loop: %v", err)
	}
	evs := e.relay.waitEvents("rejected events", func(evs []pipeline.Event) bool { return countType(evs, "rejected", "victim@foreign.test") == 1 })
	_ = evs
}

// Smuggling: every bare-CR/LF end-of-data variant stays inside one
// message, and by default such a message is refused: the sinks never see a
// second, smuggled message.
func TestNoSMTPSmuggling(t *testing.T) {
	e := newEnv(t, nil)
	e.relay.start()
	seqs := map[string]string{
		"LF.LF":   "\n.\n",
		"LF.CRLF": "\n.\r\n",
		"CR.CRLF": "\r.\r\n",
		"CRLF.CR": "\r\n.\r",
		"CRLF.LF": "\r\n.\n",
		"LF.CR":   "\n.\r",
		"NUL-dot": "\r\n\x00.\r\n",
		"dot-NUL": "\r\n.\x00\r\n",
	}
	for name, seq := range seqs {
		t.Run(name, func(t *testing.T) {
			s := dialRaw(t, e.relay.smtp)
			s.cmd("EHLO client.test")
			s.cmd("MAIL FROM:<a@sender.test>")
			s.cmd("RCPT TO:<bob@smart.test>")
			if r := s.cmd("DATA"); !strings.HasPrefix(r, "354") {
				t.Fatalf("DATA: %s", r)
			}
			s.send("Subject: outer\r\n\r\nouter body" + seq +
				"MAIL FROM:<evil@sender.test>\r\nRCPT TO:<victim@smart.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n")
			r := s.reply()
			if !strings.HasPrefix(r, "554 5.6.0") {
				t.Errorf("reply %q, want 554 5.6.0", r)
			}
			// The session continues with one reply per command: nothing
			// smuggled was executed as a command.
			if r := s.cmd("NOOP"); !strings.HasPrefix(r, "250") {
				t.Errorf("after the message, NOOP got %q", r)
			}
		})
	}
	// A clean message after all that is delivered, and nothing else is.
	if err := sendMail(e.relay.smtp, "a@sender.test", []string{"bob@smart.test"}, msgData("a@sender.test", "bob@smart.test", "clean")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the clean message", func() bool { return e.smart.count() >= 1 })
	time.Sleep(300 * time.Millisecond)
	for _, m := range e.smart.messages() {
		if bytes.Contains(m.Data, []byte("smuggled")) || m.From == "evil@sender.test" {
			t.Fatalf("smuggled content reached the sink: from=%s\n%s", m.From, m.Data)
		}
	}
	if n := e.smart.count(); n != 1 {
		t.Fatalf("sink got %d messages, want 1", n)
	}
}
