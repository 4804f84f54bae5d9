package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/internal/domains"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// rotationConfig is domainsConfig with the DNS listener and a rotation
// schedule shortened to seconds (every = "0": rotations on request).
var rotationConfig = strings.Replace(domainsConfig, `sluice.domains { spf_include = "_spf.relay.e2e.test", require_verified = true }`,
	`sluice.domains { spf_include = "_spf.relay.e2e.test" }
sluice.dns_server { listen = "{{DNSLISTEN}}", zone = "dkim.relay.e2e.test", ns = { "ns1.relay.e2e.test" }, ttl = "1s", selectors = { "s1", "s2" } }
sluice.dkim_rotation { every = "0", overlap = "2s", remove_after = "1h", check_every = "100ms" }
sluice.listen_admin { addr = "{{ADMIN}}" }`, 1)

// recursor is a recursive resolver on loopback for the test: it answers
// from the customer's zone (a dnstest server) and, when follow is on,
// follows a CNAME into Sluice's zone by asking Sluice's DNS listener, as
// a public resolver would. With follow off it has not "seen" the
// delegated keys yet: a rotation's pending key cannot become active.
type recursor struct {
	customer, sluice, zone string
	follow                 atomic.Bool
	addr                   string
}

func newRecursor(t *testing.T, customer, sluice, zone string) *recursor {
	r := &recursor{customer: customer, sluice: sluice, zone: dns.Fqdn(zone)}
	r.addr = serveDNS(t, r, nil)
	return r
}

// serveDNS serves h over UDP and TCP on one 127.0.0.1 port until the test
// ends and returns the address; setup, when set, adjusts each server.
func serveDNS(t *testing.T, h dns.Handler, setup func(*dns.Server)) string {
	t.Helper()
	pc, l, err := dnstest.ListenPair()
	if err != nil {
		t.Fatal(err)
	}
	var started sync.WaitGroup
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: l, Handler: h}} {
		if setup != nil {
			setup(srv)
		}
		started.Add(1)
		srv.NotifyStartedFunc = started.Done
		go srv.ActivateAndServe()
		t.Cleanup(func() { srv.Shutdown() })
	}
	started.Wait()
	return pc.LocalAddr().String()
}

func (r *recursor) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	q := req.Question[0]
	ask := func(server, name string) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, q.Qtype)
		m.SetEdns0(4096, false)
		resp, _, err := (&dns.Client{Net: "tcp", Timeout: 5 * time.Second}).Exchange(m, server)
		if err != nil {
			return nil
		}
		return resp
	}
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.RecursionAvailable = true
	up := ask(r.customer, q.Name)
	if up == nil {
		resp.Rcode = dns.RcodeServerFailure
		w.WriteMsg(resp)
		return
	}
	resp.Rcode, resp.Answer, resp.Ns = up.Rcode, up.Answer, up.Ns
	if q.Qtype != dns.TypeCNAME && len(up.Answer) > 0 {
		if cn, ok := up.Answer[len(up.Answer)-1].(*dns.CNAME); ok && dns.IsSubDomain(r.zone, strings.ToLower(cn.Target)) && r.follow.Load() {
			if down := ask(r.sluice, cn.Target); down != nil {
				resp.Rcode, resp.Ns = down.Rcode, down.Ns
				resp.Answer = append(resp.Answer, down.Answer...)
			}
		}
	}
	w.WriteMsg(resp)
}

// udpTCPPort returns a 127.0.0.1 address whose port was free for both
// UDP and TCP.
func udpTCPPort(t *testing.T) string {
	t.Helper()
	pc, l, err := dnstest.ListenPair()
	if err != nil {
		t.Fatal(err)
	}
	pc.Close()
	l.Close()
	return pc.LocalAddr().String()
}

// sluiceTXT asks Sluice's DNS listener directly for the TXT record at
// name: its value, or "" with the rcode.
func sluiceTXT(t *testing.T, server, name string) (string, int) {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeTXT)
	resp, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, server)
	if err != nil {
		t.Fatalf("asking Sluice's DNS for %s: %v", name, err)
	}
	if !resp.Authoritative {
		t.Errorf("%s: answer not authoritative", name)
	}
	for _, rr := range resp.Answer {
		if txt, ok := rr.(*dns.TXT); ok {
			return strings.Join(txt.Txt, ""), resp.Rcode
		}
	}
	return "", resp.Rcode
}

// TestRotationEndToEnd, against the real binary with a shortened
// schedule: a domain registered with sluice.dns_server gets CNAME records
// (published once in the customer's zone, never changed afterwards) and
// is verified; mail is signed with s1 and verifies through the CNAME and
// Sluice's DNS listener. `sluice domain rotate` publishes a pending key
// under s2 that does not sign while a check resolver does not return it;
// once the resolver sees it (and the 1 s TTL passed) it becomes active:
// mail is signed with s2 and verifies; after the 2 s overlap s1 is
// revoked (empty p=, so the first message no longer verifies). Every step
// is an event matching the schema. (Removal is TestRotationSteps'.)
func TestRotationEndToEnd(t *testing.T) {
	testutil.NeedDKIMPy(t)
	h := &httpEnv{t: t, dns: dnstest.NewServer(t), mx: newSink(t), smart: newSink(t)}
	const zone = "dkim.relay.e2e.test"
	dnsListen := udpTCPPort(t)
	rec := newRecursor(t, h.dns.Addr(), dnsListen, zone)
	admin := freePort(t)
	key := h.startWith(rotationConfig, rec.addr, "{{ADMIN}}", admin, "{{DNSLISTEN}}", dnsListen)

	out, errs, code := h.domainCLI(key, "add", "brand.test", "--json")
	if code != 0 {
		t.Fatalf("domain add: exit %d\n%s%s", code, out, errs)
	}
	var added struct {
		Records []domains.Status `json:"records"`
	}
	if err := json.Unmarshal([]byte(out), &added); err != nil {
		t.Fatal(err)
	}
	var cnames []string
	for _, r := range added.Records {
		switch r.Type {
		case "TXT":
			h.dns.AddTXT(r.Name, r.Value)
		case "CNAME":
			h.dns.AddCNAME(r.Name, r.Value)
			cnames = append(cnames, r.Name+" -> "+r.Value)
		}
	}
	if strings.Join(cnames, ", ") != "s1._domainkey.brand.test -> s1.brand-test.dkim.relay.e2e.test, s2._domainkey.brand.test -> s2.brand-test.dkim.relay.e2e.test" {
		t.Fatalf("CNAME records: %v", cnames)
	}
	if out, errs, code := h.domainCLI(key, "verify", "brand.test"); code != 0 || !strings.Contains(out, "brand.test: verified") {
		t.Fatalf("verify: exit %d\n%s%s", code, out, errs)
	}

	// keyRecord is what a verifier finds for selector sel: the customer's
	// CNAME (unchanged), then Sluice's DNS listener.
	keyRecord := func(sel string) (string, int) {
		return sluiceTXT(t, dnsListen, sel+".brand-test."+zone)
	}
	send := func(n int) []byte {
		t.Helper()
		body, _ := json.Marshal(map[string]any{"from": "app@brand.test", "to": []string{"bob@dest.test"}, "subject": "phase", "text": "hello"})
		if r := h.do("POST", "/v1/messages", key, body, nil); r.status != http.StatusAccepted {
			t.Fatalf("send: %s", r)
		}
		waitFor(t, "the message at the next hop", func() bool { return h.smart.count() == n })
		return h.smart.messages()[n-1].Data
	}
	verify := func(msg []byte) string {
		t.Helper()
		recs := map[string]string{}
		for _, sel := range []string{"s1", "s2"} {
			if v, _ := keyRecord(sel); v != "" {
				recs[sel+"._domainkey.brand.test"] = v
			}
		}
		return strings.Join(testutil.DKIMPyVerify(t, msg, recs), "\n")
	}
	waitEvent := func(typ, sel string) {
		t.Helper()
		h.relay.waitEvents(typ+" "+sel, func(evs []pipeline.Event) bool {
			for _, ev := range evs {
				if ev.Type == typ && ev.Metadata["domain"] == "brand.test" && ev.Metadata["selector"] == sel && ev.Tenant == "acme" {
					return true
				}
			}
			return false
		})
	}

	// Phase 1: s1 signs.
	m1 := send(1)
	if got := verify(m1); got != "pass d=brand.test s=s1 a=rsa-sha256" {
		t.Fatalf("s1 active: dkimpy %q", got)
	}
	if _, rcode := keyRecord("s2"); rcode != dns.RcodeNameError {
		t.Errorf("s2 before the rotation: rcode %s, want NXDOMAIN", dns.RcodeToString[rcode])
	}

	// Phase 2: pending. The resolver does not follow into Sluice's zone
	// yet, so the key stays pending and s1 still signs.
	if out, errs, code := h.domainCLI(key, "rotate", "brand.test"); code != 0 {
		t.Fatalf("rotate: exit %d\n%s%s", code, out, errs)
	}
	if _, errs, code := h.domainCLI(key, "rotate", "brand.test"); code != 1 || !strings.Contains(errs, "409") {
		t.Errorf("second rotate: exit %d %s", code, errs)
	}
	waitEvent(pipeline.EventDKIMKeyPending, "s2")
	if v, _ := keyRecord("s2"); !strings.HasPrefix(v, "v=DKIM1; k=rsa; p=MII") {
		t.Fatalf("pending key published as %q", v)
	}
	out, _, _ = h.domainCLI(key, "show", "brand.test")
	if !strings.Contains(out, "key s2        pending") || !strings.Contains(out, "key s1        active") {
		t.Errorf("show while pending:\n%s", out)
	}
	// The metrics show the waiting key and the listener's answers.
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`sluice_dkim_keys{state="pending"} 1`, `sluice_dkim_keys{state="active"} 1`, `sluice_dkim_keys{state="revoked"} 0`} {
		if !strings.Contains(string(body), want+"\n") {
			t.Errorf("metrics lack %q:\n%s", want, grepLines(string(body), "sluice_d"))
		}
	}
	if !strings.Contains(string(body), `sluice_dns_queries_total{rcode="NOERROR"} `) || !strings.Contains(string(body), "sluice_dkim_pending_key_age_seconds ") {
		t.Errorf("metrics:\n%s", grepLines(string(body), "sluice_d"))
	}
	m2 := send(2)
	if got := verify(m2); got != "pass d=brand.test s=s1 a=rsa-sha256" {
		t.Fatalf("s2 pending: dkimpy %q", got)
	}

	// Phase 3: the resolver sees the new key: it becomes active.
	rec.follow.Store(true)
	waitEvent(pipeline.EventDKIMKeyActive, "s2")
	m3 := send(3)
	if got := verify(m3); got != "pass d=brand.test s=s2 a=rsa-sha256" {
		t.Fatalf("s2 active: dkimpy %q", got)
	}

	// Phase 4: after the overlap s1 is revoked: published with an empty
	// p=, so mail signed with it no longer verifies.
	waitEvent(pipeline.EventDKIMKeyRevoked, "s1")
	if v, rcode := keyRecord("s1"); v != "v=DKIM1; k=rsa; p=" || rcode != dns.RcodeSuccess {
		t.Errorf("s1 revoked: %q rcode %s", v, dns.RcodeToString[rcode])
	}
	m4 := send(4)
	if got := verify(m4); got != "pass d=brand.test s=s2 a=rsa-sha256" {
		t.Fatalf("s1 revoked: dkimpy %q", got)
	}
	if got := verify(m1); !strings.HasPrefix(got, "fail d=brand.test s=s1") {
		t.Errorf("a message signed with the revoked key: dkimpy %q", got)
	}

	// The customer's records never changed: still verified, same CNAMEs.
	out, errs, code = h.domainCLI(key, "verify", "brand.test", "--json")
	if code != 0 {
		t.Fatalf("verify after the rotation: exit %d\n%s%s", code, out, errs)
	}
	var after struct {
		Records []domains.Status `json:"records"`
	}
	json.Unmarshal([]byte(out), &after)
	if len(after.Records) != len(added.Records) {
		t.Fatalf("records changed: %d, want %d", len(after.Records), len(added.Records))
	}
	for i, r := range after.Records {
		if r.Zone != added.Records[i].Zone || r.State != domains.Verified {
			t.Errorf("record %d: %s %s, was %s", i, r.State, r.Zone, added.Records[i].Zone)
		}
	}
}
