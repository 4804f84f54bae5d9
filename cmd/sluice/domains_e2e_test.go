package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/dkim"
	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/internal/domains"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

const domainsConfig = `
local sluice = require("sluice")
sluice.node { name = "domains-e2e-1", hostname = "relay.e2e.test" }
sluice.spool { path = "{{SPOOL}}" }
sluice.events { file = "{{EVENTS}}" }
sluice.listen_smtp { addr = "{{SMTP}}" }
sluice.listen_http { addr = "{{HTTP}}" }
sluice.delivery { resolver = "{{DNS}}", port = {{MXPORT}}, idle_timeout = "1s" }
sluice.domains { spf_include = "_spf.relay.e2e.test", require_verified = true }
sluice.stage("dkim", sluice.builtin.dkim_sign { keys = {} })
sluice.stage("routing", {
  on_route = function(msg, rcpt)
    return sluice.route.relay { host = "127.0.0.1", port = {{SMARTPORT}}, tls = "none" }
  end,
})
`

// domainCLI runs `sluice domain ARGS` against the relay's API.
func (h *httpEnv) domainCLI(key string, args ...string) (stdout, stderr string, code int) {
	h.t.Helper()
	return h.apiCLI(key, "domain", args...)
}

// startWith starts the relay of cfg, its {{HTTP}}, {{DNS}} (resolver),
// {{MXPORT}}, {{SMARTPORT}} and the extra placeholder/value pairs
// filled, and returns an API key of tenant acme.
func (h *httpEnv) startWith(cfg, resolver string, extra ...string) string {
	h.t.Helper()
	httpAddr := freePort(h.t)
	pairs := append([]string{"{{HTTP}}", httpAddr, "{{DNS}}", resolver, "{{MXPORT}}", h.mx.port(), "{{SMARTPORT}}", h.smart.port()}, extra...)
	h.relay = newRelay(h.t, h.t.TempDir(), strings.NewReplacer(pairs...).Replace(cfg))
	h.base = "http://" + httpAddr
	h.client = &http.Client{Timeout: 30 * time.Second}
	h.t.Cleanup(h.client.CloseIdleConnections)
	h.start()
	return h.createLiveKey("acme")
}

// TestDomainsEndToEnd, against the real binary: `sluice domain add`
// registers a domain and prints its records; with require_verified the
// tenant may not send from it (HTTP 403 naming "from") until the records
// are served by the loopback DNS server and `sluice domain verify`
// succeeds; the mail then carries a signature by the domain's generated
// key that dkimpy verifies; the events file has domain_added and
// domain_verified.
func TestDomainsEndToEnd(t *testing.T) {
	testutil.NeedDKIMPy(t)
	h := &httpEnv{t: t, dns: dnstest.NewServer(t), mx: newSink(t), smart: newSink(t)}
	key := h.startWith(domainsConfig, h.dns.Addr())

	out, errs, code := h.domainCLI(key, "add", "brand.test")
	if code != 0 || !strings.Contains(out, "brand.test: unverified") || !strings.Contains(out, "sluice._domainkey.brand.test. 3600 IN TXT") {
		t.Fatalf("domain add: exit %d\n%s%s", code, out, errs)
	}
	if _, errs, code := h.domainCLI(key, "add", "brand.test"); code != 1 || !strings.Contains(errs, "409") {
		t.Errorf("second add: exit %d %s", code, errs)
	}
	out, _, code = h.domainCLI(key, "show", "brand.test", "--json")
	if code != 0 {
		t.Fatalf("show: exit %d", code)
	}
	var shown struct {
		Records []domains.Status `json:"records"`
	}
	if err := json.Unmarshal([]byte(out), &shown); err != nil || len(shown.Records) != 3 {
		t.Fatalf("show --json: %v\n%s", err, out)
	}

	send := func() httpResp {
		body, _ := json.Marshal(map[string]any{"from": "app@brand.test", "to": []string{"bob@dest.test"}, "subject": "signed", "text": "hello"})
		return h.do("POST", "/v1/messages", key, body, nil)
	}
	if r := send(); r.status != http.StatusForbidden || r.apiError().Error.Field != "from" || !strings.Contains(r.apiError().Error.Message, "brand.test is not verified") {
		t.Errorf("sending from an unverified domain: %s", r)
	}
	if _, _, code := h.domainCLI(key, "verify", "brand.test"); code != 1 {
		t.Errorf("verify with nothing published: exit %d, want 1", code)
	}

	recs := map[string]string{}
	for _, r := range shown.Records {
		h.dns.AddTXT(r.Name, dkim.SplitTXT(r.Value)...)
		if r.Kind == domains.KindDKIM {
			recs[r.Name] = r.Value
		}
	}
	if out, errs, code := h.domainCLI(key, "verify", "brand.test"); code != 0 || !strings.Contains(out, "brand.test: verified") {
		t.Fatalf("verify with the records published: exit %d\n%s%s", code, out, errs)
	}
	if r := send(); r.status != http.StatusAccepted {
		t.Fatalf("sending from the verified domain: %s", r)
	}
	waitFor(t, "the message at the next hop", func() bool { return h.smart.count() == 1 })
	got := h.smart.messages()[0].Data
	if res := testutil.DKIMPyVerify(t, got, recs); strings.Join(res, "\n") != "pass d=brand.test s=sluice a=rsa-sha256" {
		t.Errorf("dkimpy: %q\n%s", res, got)
	}
	// Another tenant may send From the domain (require_verified binds
	// only the tenant that registered it) but is not signed with its key.
	otherKey := h.createLiveKey("other")
	body, _ := json.Marshal(map[string]any{"from": "spoof@brand.test", "to": []string{"eve@dest.test"}, "subject": "unsigned", "text": "hello"})
	if r := h.do("POST", "/v1/messages", otherKey, body, nil); r.status != http.StatusAccepted {
		t.Fatalf("other tenant: %s", r)
	}
	waitFor(t, "the other tenant's message", func() bool { return h.smart.count() == 2 })
	if m := h.smart.messages()[1].Data; bytes.Contains(m, []byte("DKIM-Signature:")) {
		t.Errorf("another tenant's mail was signed with the domain's key:\n%s", m)
	}
	h.relay.waitEvents("domain events", func(evs []pipeline.Event) bool {
		n := 0
		for _, ev := range evs {
			if (ev.Type == pipeline.EventDomainAdded || ev.Type == pipeline.EventDomainVerified) && ev.Tenant == "acme" && ev.Metadata["domain"] == "brand.test" {
				n++
			}
		}
		return n == 2
	})
	out, _, code = h.domainCLI(key, "list")
	if code != 0 || !strings.Contains(out, "brand.test: verified") {
		t.Errorf("list: exit %d\n%s", code, out)
	}
}
