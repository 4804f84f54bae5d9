package main

import (
	"bytes"
	"strings"
	"testing"
)

// inboundAuthConfig checks SPF, DKIM and DMARC as an MX does, and a Lua
// policy refuses what fails DMARC with a reject disposition.
const inboundAuthConfig = `
sluice.stage("spf", sluice.builtin.spf())
sluice.stage("dkim-verify", sluice.builtin.dkim_verify { max_signatures = 3 })
sluice.stage("dmarc", sluice.builtin.dmarc())
sluice.stage("policy", {
  on_message = function(msg)
    if msg.auth.dmarc == "fail" and msg:scratch("dmarc.disposition") == "reject" then
      return sluice.reject(550, "5.7.1", "Rejected by the DMARC policy of " .. msg:scratch("dmarc.domain"))
    end
  end,
})
`

// TestInboundAuthEndToEnd: over real SMTP, with the records on a loopback
// DNS server, mail whose SPF passes and aligns is delivered with one
// merged Authentication-Results field; mail from a domain whose SPF
// fails and whose DMARC policy is reject is refused with 550 5.7.1 by
// the Lua stage.
func TestInboundAuthEndToEnd(t *testing.T) {
	// 127.0.0.1 is not a relay network here: mail from it arrives as at
	// an MX (a relay network's mail is a submission and is not checked).
	e := newEnv(t, map[string]string{"{{RELAYNETS}}": `"10.255.0.0/16"`})
	e.dns.AddMX("local.test", 10, "mx1.mx.test")
	e.dns.AddTXT("good.test", "v=spf1 ip4:127.0.0.1 -all")
	e.dns.AddTXT("_dmarc.good.test", "v=DMARC1; p=reject")
	e.dns.AddTXT("bad.test", "v=spf1 ip4:192.0.2.1 -all")
	e.dns.AddTXT("_dmarc.bad.test", "v=DMARC1; p=reject")
	pairs := []string{}
	for k, v := range e.vars {
		pairs = append(pairs, k, v)
	}
	e.relay = newRelay(t, t.TempDir(), strings.NewReplacer(pairs...).Replace(baseConfig)+inboundAuthConfig)
	e.relay.start()

	if err := sendMail(e.relay.smtp, "alice@good.test", []string{"bob@local.test"}, msgData("alice@good.test", "bob@local.test", "auth-1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the message at the MX", func() bool { return e.mx.count() == 1 })
	got := e.mx.messages()[0].Data
	want := "Authentication-Results: relay.e2e.test; spf=pass smtp.mailfrom=alice@good.test; dkim=none; dmarc=pass header.from=good.test\r\n"
	unfolded := bytes.ReplaceAll(got, []byte("\r\n "), []byte(" "))
	if !bytes.Contains(unfolded, []byte(want)) || bytes.Count(got, []byte("Authentication-Results:")) != 1 {
		t.Fatalf("want one field %q in:\n%s", want, got)
	}

	err := sendMail(e.relay.smtp, "ceo@bad.test", []string{"bob@local.test"}, msgData("ceo@bad.test", "bob@local.test", "auth-2"))
	if err == nil || !strings.Contains(err.Error(), "550") || !strings.Contains(err.Error(), "5.7.1") || !strings.Contains(err.Error(), "DMARC policy of bad.test") {
		t.Fatalf("spoofed mail: %v, want 550 5.7.1 from the Lua policy", err)
	}
	if n := e.mx.count(); n != 1 {
		t.Errorf("%d messages at the MX, want 1", n)
	}
}
