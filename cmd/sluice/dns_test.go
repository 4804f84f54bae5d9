package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/dkim"
	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/internal/domains"
)

// serveRecords publishes recs on a loopback DNS server, as a customer
// would in their zone.
func serveRecords(s *dnstest.Server, recs []domains.Record, skip ...string) {
	for _, r := range recs {
		if containsString(skip, r.Kind) {
			continue
		}
		switch r.Type {
		case "TXT":
			s.AddTXT(r.Name, dkim.SplitTXT(r.Value)...)
		case "MX":
			s.AddMX(r.Name, 10, r.Value)
		}
	}
}

func containsString(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// TestDNSRecordsAndCheck: records lists SPF, the configured DKIM keys,
// DMARC and the return-path; check exits 1 while anything is missing or
// wrong, naming the fix, and 0 once every record is served.
func TestDNSRecordsAndCheck(t *testing.T) {
	dir := t.TempDir()
	for _, k := range []struct{ sel, algo string }{{"s1", dkim.AlgoRSA}, {"s2", dkim.AlgoEd25519}} {
		key, err := dkim.Generate(k.algo)
		if err != nil {
			t.Fatal(err)
		}
		pemData, _ := dkim.MarshalPrivateKey(key)
		if err := os.WriteFile(filepath.Join(dir, "example.com."+k.sel+".pem"), pemData, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := filepath.Join(dir, "pipeline.lua")
	os.WriteFile(cfg, []byte(`local sluice = require("sluice")
sluice.domains { spf_include = "_spf.relay.example", spf_ips = { "192.0.2.7" }, return_path_mx = "mx.relay.example" }
sluice.stage("dkim", sluice.builtin.dkim_sign { keys = {
  { domain = "example.com", selector = "s1", key = "example.com.s1.pem" },
  { domain = "example.com", selector = "s2", key = "example.com.s2.pem" },
  { domain = "other.example", selector = "o1", key = "example.com.s1.pem" },
} })
`), 0o644)
	dnsCmd := func(args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		code := run(append([]string{"dns"}, args...), &out, &errb)
		return out.String(), errb.String(), code
	}
	for _, bad := range [][]string{{}, {"records"}, {"zap", "example.com"}, {"check", "exa mple.com", "-c", cfg}} {
		if _, _, code := dnsCmd(bad...); code != 2 {
			t.Errorf("%v: exit %d, want 2", bad, code)
		}
	}
	out, errs, code := dnsCmd("records", "example.com", "-c", cfg, "--json")
	if code != 0 {
		t.Fatalf("records: exit %d: %s", code, errs)
	}
	var recs []domains.Record
	if err := json.Unmarshal([]byte(out), &recs); err != nil {
		t.Fatal(err, out)
	}
	var kinds []string
	for _, r := range recs {
		kinds = append(kinds, r.Kind+" "+r.Name)
	}
	want := "spf example.com|dkim s1._domainkey.example.com|dkim s2._domainkey.example.com|dmarc _dmarc.example.com|" +
		"return_path bounces.example.com|return_path_spf bounces.example.com"
	if got := strings.Join(kinds, "|"); got != want {
		t.Fatalf("records:\n got %s\nwant %s", got, want)
	}
	if recs[0].Value != "v=spf1 include:_spf.relay.example ip4:192.0.2.7 ~all" {
		t.Errorf("spf value %q", recs[0].Value)
	}
	if !strings.HasPrefix(recs[1].Value, "v=DKIM1; k=rsa; p=") || !strings.HasPrefix(recs[2].Value, "v=DKIM1; k=ed25519; p=") {
		t.Errorf("dkim values %q %q", recs[1].Value, recs[2].Value)
	}

	srv := dnstest.NewServer(t)
	check := func() ([]domains.Status, string, int) {
		out, errs, code := dnsCmd("check", "example.com", "-c", cfg, "--resolver", srv.Addr(), "--json")
		var st []domains.Status
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("%v: %s %s", err, out, errs)
		}
		return st, errs, code
	}
	st, _, code := check()
	if code != 1 {
		t.Errorf("empty zone: exit %d, want 1", code)
	}
	for _, s := range st {
		if s.State != domains.Missing || s.Fix != s.Zone {
			t.Errorf("empty zone: %s %s: %s, fix %q", s.Kind, s.Name, s.State, s.Fix)
		}
	}

	// An SPF record without our include and a missing DMARC record.
	serveRecords(srv, recs, domains.KindSPF, domains.KindDMARC)
	srv.AddTXT("example.com", "v=spf1 mx -all")
	srv.AddTXT("example.com", "google-site-verification=abc")
	st, _, code = check()
	if code != 1 {
		t.Errorf("wrong SPF, no DMARC: exit %d, want 1", code)
	}
	got := map[string]domains.Status{}
	for _, s := range st {
		got[s.Kind+" "+s.Name] = s
	}
	if s := got["spf example.com"]; s.State != domains.Wrong ||
		s.Fix != `example.com. 3600 IN TXT "v=spf1 mx include:_spf.relay.example ip4:192.0.2.7 -all"` {
		t.Errorf("spf: %+v", s)
	}
	if s := got["dmarc _dmarc.example.com"]; s.State != domains.Missing ||
		s.Fix != `_dmarc.example.com. 3600 IN TXT "v=DMARC1; p=none; adkim=r; aspf=r"` {
		t.Errorf("dmarc: %+v", s)
	}
	for _, k := range []string{"dkim s1._domainkey.example.com", "dkim s2._domainkey.example.com", "return_path bounces.example.com", "return_path_spf bounces.example.com"} {
		if got[k].State != domains.Verified {
			t.Errorf("%s: %+v", k, got[k])
		}
	}
	out, _, code = dnsCmd("check", "example.com", "-c", cfg, "--resolver", srv.Addr())
	if code != 1 || !strings.Contains(out, "wrong    spf") || !strings.Contains(out, "fix: example.com. 3600 IN TXT \"v=spf1 mx include:") {
		t.Errorf("text output (exit %d):\n%s", code, out)
	}

	// Fixed: the merged SPF record and a DMARC record with the domain's
	// own policy.
	srv.Remove("example.com")
	srv.AddTXT("example.com", "v=spf1 mx include:_spf.relay.example ip4:192.0.2.7 -all")
	srv.AddTXT("_dmarc.example.com", "v=DMARC1; p=reject")
	st, errs, code = check()
	if code != 0 {
		t.Errorf("fixed zone: exit %d: %+v %s", code, st, errs)
	}
	out, _, code = dnsCmd("check", "example.com", "-c", cfg, "--resolver", srv.Addr())
	if code != 0 || strings.Count(out, "ok ") != 6 {
		t.Errorf("text output (exit %d):\n%s", code, out)
	}
}
