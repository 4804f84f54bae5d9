package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

const daneConfig = `
local sluice = require("sluice")
sluice.node { name = "dane-e2e-1", hostname = "relay.e2e.test" }
sluice.spool { path = "{{SPOOL}}" }
sluice.events { file = "{{EVENTS}}" }
sluice.listen_smtp { addr = "{{SMTP}}", relay_networks = { "127.0.0.0/8" } }
sluice.delivery {
  resolver = "{{DNS}}",
  port = {{MXPORT}},
  dane = true,
  mta_sts = false,
  retry = { initial = "1h", max = "1h", jitter = 0 },
  idle_timeout = "1s",
}
`

// TestDANEEndToEnd, against the real binary with sluice.delivery{ dane =
// true } and a loopback DNS server that sets the AD bit: mail to a
// domain whose MX host's TLSA record (3 1 1) matches the sink's
// self-signed certificate is delivered over TLS with tls_policy dane;
// mail to one whose record does not match is deferred, the event naming
// tls_failure tlsa-invalid, and the sink never sees it; `sluice test
// --route` shows the records.
func TestDANEEndToEnd(t *testing.T) {
	cert := testutil.SelfSignedCert(t, "unrelated.example")
	sink := testutil.StartSink(t, testutil.SinkOptions{IP: "127.0.0.1", TLS: cert.TLS})
	dns := dnstest.NewServer(t)
	spki := sha256.Sum256(cert.Leaf.RawSubjectPublicKeyInfo)
	other := make([]byte, 32)
	rand.Read(other)
	for domain, data := range map[string][]byte{"dane.test": spki[:], "bad.test": other} {
		mx := "mx." + domain
		dns.AddMX(domain, 10, mx)
		dns.AddA(mx, "127.0.0.1")
		dns.AddTLSA(mx, sink.Port, 3, 1, 1, data)
		dns.SetSecure(true, domain, mx, "_"+strconv.Itoa(sink.Port)+"._tcp."+mx)
	}
	r := newRelay(t, t.TempDir(), strings.NewReplacer("{{DNS}}", dns.Addr(), "{{MXPORT}}", strconv.Itoa(sink.Port)).Replace(daneConfig))
	r.start()

	if err := sendMail(r.smtp, "a@sender.test", []string{"x@dane.test"}, "Subject: dane\r\n\r\nhello\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := sendMail(r.smtp, "a@sender.test", []string{"y@bad.test"}, "Subject: bad\r\n\r\nhello\r\n"); err != nil {
		t.Fatal(err)
	}
	evs := r.waitEvents("delivered and deferred", func(evs []pipeline.Event) bool {
		return countType(evs, pipeline.EventDelivered, "x@dane.test") == 1 && countType(evs, pipeline.EventDeferred, "y@bad.test") == 1
	})
	for _, ev := range evs {
		switch {
		case ev.Type == pipeline.EventDelivered:
			if ev.Remote == nil || ev.Remote.TLSPolicy != "dane" || !ev.Remote.TLSValidated || ev.Remote.TLS == "" {
				t.Errorf("delivered event remote = %+v", ev.Remote)
			}
		case ev.Type == pipeline.EventDeferred:
			if ev.Remote == nil || ev.Remote.TLSFailure != "tlsa-invalid" || ev.Remote.TLSPolicy != "dane" || ev.Remote.Host != "mx.bad.test" {
				t.Errorf("deferred event remote = %+v", ev.Remote)
			}
			if ev.Response == nil || ev.Response.Enhanced != "4.7.5" || !strings.Contains(ev.Response.Text, "matches no TLSA record") {
				t.Errorf("deferred event response = %+v", ev.Response)
			}
		}
	}
	if msgs := sink.Messages(); len(msgs) != 1 || msgs[0].Rcpts[0] != "x@dane.test" {
		t.Fatalf("sink got %d messages: %+v", len(msgs), msgs)
	}

	out, errOut, code := runIn(t, t.TempDir(), "test", "-c", r.cfg, "--route", "x@dane.test")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("TLS opportunistic; mx.dane.test: dane [3 1 1 %x]", spki)) {
		t.Errorf("sluice test --route: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = runIn(t, t.TempDir(), "test", "-c", r.cfg, "--json", "--route", "x@dane.test")
	var tr struct {
		Recipients []struct {
			TLS struct {
				Policy string
				Hosts  []struct {
					Host, Policy string
					TLSA         []string
				}
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &tr); err != nil || code != 0 || len(tr.Recipients) != 1 {
		t.Fatalf("--json: exit %d %v\n%s%s", code, err, out, errOut)
	}
	if p := tr.Recipients[0].TLS; p.Policy != "opportunistic" || len(p.Hosts) != 1 || p.Hosts[0].Policy != "dane" || len(p.Hosts[0].TLSA) != 1 {
		t.Errorf("--json tls = %+v", p)
	}
}
