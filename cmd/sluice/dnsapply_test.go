package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-mta/sluice/internal/dkim"
)

// updateServer is a primary DNS server on loopback for one zone that
// answers queries from an in-memory zone and applies RFC 2136 updates
// signed with its TSIG key; unsigned updates are REFUSED, badly signed
// ones NOTAUTH with TSIG error BADSIG (RFC 8945 section 5.2.2), as BIND
// does.
type updateServer struct {
	t       *testing.T
	zone    string
	key     string // TSIG key name, FQDN
	addr    string
	mu      sync.Mutex
	rrs     []dns.RR
	updates int
}

func newUpdateServer(t *testing.T, zone, key, secret string) *updateServer {
	s := &updateServer{t: t, zone: dns.Fqdn(zone), key: dns.Fqdn(key)}
	s.addr = serveDNS(t, dns.HandlerFunc(s.serve), func(srv *dns.Server) {
		srv.TsigSecret = map[string]string{s.key: secret}
		srv.MsgAcceptFunc = func(dns.Header) dns.MsgAcceptAction { return dns.MsgAccept } // UPDATE too
	})
	return s
}

func (s *updateServer) add(zone string) {
	rr, err := dns.NewRR(zone)
	if err != nil {
		s.t.Fatal(err)
	}
	s.mu.Lock()
	s.rrs = append(s.rrs, rr)
	s.mu.Unlock()
}

// records returns the zone's records at name of type t, as strings.
func (s *updateServer) records(name string, t uint16) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, rr := range s.rrs {
		if strings.EqualFold(rr.Header().Name, dns.Fqdn(name)) && rr.Header().Rrtype == t {
			switch rr := rr.(type) {
			case *dns.TXT:
				out = append(out, strings.Join(rr.Txt, ""))
			case *dns.CNAME:
				out = append(out, rr.Target)
			case *dns.MX:
				out = append(out, rr.Mx)
			}
		}
	}
	return out
}

func (s *updateServer) serve(w dns.ResponseWriter, req *dns.Msg) {
	resp := new(dns.Msg)
	resp.SetReply(req)
	s.mu.Lock()
	defer s.mu.Unlock()
	if req.Opcode == dns.OpcodeQuery {
		q := req.Question[0]
		resp.Authoritative = true
		exists := false
		for _, rr := range s.rrs {
			if !strings.EqualFold(rr.Header().Name, q.Name) {
				continue
			}
			exists = true
			if t := rr.Header().Rrtype; t == q.Qtype || t == dns.TypeCNAME {
				resp.Answer = append(resp.Answer, dns.Copy(rr))
			}
		}
		if !exists {
			resp.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(resp)
		return
	}
	t := req.IsTsig()
	switch {
	case t == nil:
		resp.Rcode = dns.RcodeRefused
		w.WriteMsg(resp)
		return
	case w.TsigStatus() != nil:
		// Unsigned answer carrying the TSIG error (RFC 8945 5.2.2).
		resp.Rcode = dns.RcodeNotAuth
		resp.Extra = append(resp.Extra, &dns.TSIG{Hdr: dns.RR_Header{Name: t.Hdr.Name, Rrtype: dns.TypeTSIG, Class: dns.ClassANY},
			Algorithm: t.Algorithm, TimeSigned: t.TimeSigned, Fudge: t.Fudge, OrigId: req.Id, Error: dns.RcodeBadSig})
		buf, err := resp.Pack()
		if err != nil {
			s.t.Error(err)
			return
		}
		w.Write(buf)
		return
	case !strings.EqualFold(req.Question[0].Name, s.zone):
		resp.Rcode = dns.RcodeNotAuth
	default:
		s.updates++
		for _, u := range req.Ns {
			h := u.Header()
			match := func(rr dns.RR) bool {
				if !strings.EqualFold(rr.Header().Name, h.Name) {
					return false
				}
				switch h.Class {
				case dns.ClassANY:
					return h.Rrtype == dns.TypeANY || rr.Header().Rrtype == h.Rrtype
				case dns.ClassNONE:
					c := dns.Copy(u)
					c.Header().Class, c.Header().Ttl = dns.ClassINET, rr.Header().Ttl
					return dns.IsDuplicate(rr, c)
				}
				return false
			}
			if h.Class == dns.ClassANY || h.Class == dns.ClassNONE {
				keep := s.rrs[:0]
				for _, rr := range s.rrs {
					if !match(rr) {
						keep = append(keep, rr)
					}
				}
				s.rrs = keep
				continue
			}
			s.rrs = append(s.rrs, dns.Copy(u))
		}
	}
	resp.SetTsig(t.Hdr.Name, t.Algorithm, 300, time.Now().Unix())
	w.WriteMsg(resp)
}

// TestDNSApply: `sluice dns apply` against a primary that takes RFC 2136
// updates with TSIG: the records `sluice dns records` lists are present
// afterwards (a wrong SPF record merged, the site's other TXT record
// kept, a stale DKIM TXT replaced by the CNAME to sluice.dns_server's
// zone); a second run says "nothing to change" and sends no update; a
// wrong secret, no key, a zone the server does not hold and records
// outside the zone give clear errors.
func TestDNSApply(t *testing.T) {
	dir := t.TempDir()
	key, err := dkim.Generate(dkim.AlgoEd25519)
	if err != nil {
		t.Fatal(err)
	}
	pemData, _ := dkim.MarshalPrivateKey(key)
	os.WriteFile(filepath.Join(dir, "k.pem"), pemData, 0o600)
	cfg := filepath.Join(dir, "pipeline.lua")
	os.WriteFile(cfg, []byte(`local sluice = require("sluice")
sluice.domains { spf_include = "_spf.relay.example", return_path_mx = "mx.relay.example" }
sluice.dns_server { listen = "127.0.0.1:0", zone = "dkim.relay.example", ns = { "ns1.relay.example" } }
sluice.stage("dkim", sluice.builtin.dkim_sign { keys = { { domain = "example.com", selector = "s7", key = "k.pem" } } })
`), 0o644)
	const secret = "c2x1aWNlLXRlc3QtdHNpZy1zZWNyZXQtMzItYnl0ZXM=" // base64
	srv := newUpdateServer(t, "example.com", "sluice-key", secret)
	srv.add(`example.com. 3600 IN TXT "v=spf1 ip4:198.51.100.1 -all"`)
	srv.add(`example.com. 3600 IN TXT "google-site-verification=abc"`)
	srv.add(`s7._domainkey.example.com. 3600 IN TXT "v=DKIM1; k=ed25519; p=OLDKEY"`)

	apply := func(args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		code := run(append([]string{"dns", "apply", "example.com", "-c", cfg, "--server", srv.addr}, args...), &out, &errb)
		return out.String(), errb.String(), code
	}
	withKey := []string{"--zone", "example.com", "--tsig-name", "sluice-key", "--tsig-secret", secret}

	// With sluice.dns_server, `dns records` lists the key as a CNAME.
	var rout, rerr bytes.Buffer
	if code := run([]string{"dns", "records", "example.com", "-c", cfg}, &rout, &rerr); code != 0 ||
		!strings.Contains(rout.String(), "; dkim_cname\ns7._domainkey.example.com. 3600 IN CNAME s7.example-com.dkim.relay.example.\n") ||
		strings.Contains(rout.String(), "IN TXT \"v=DKIM1") {
		t.Errorf("dns records: exit %d\n%s%s", code, rout.String(), rerr.String())
	}

	// Failures first: the zone is unchanged by them.
	bad := "d3JvbmctdHNpZy1zZWNyZXQtd3Jvbmctd3Jvbmctd3Jvbmc="
	for _, c := range []struct {
		args []string
		want string
		code int
	}{
		{[]string{"--zone", "example.com", "--tsig-name", "sluice-key", "--tsig-secret", bad}, "BADSIG", 1},
		{[]string{"--zone", "example.com"}, "REFUSED", 1},
		{[]string{"--zone", "com", "--tsig-name", "sluice-key", "--tsig-secret", secret}, "NOTAUTH: the server is not authoritative for com", 1},
		{[]string{"--zone", "other.example", "--tsig-name", "sluice-key", "--tsig-secret", secret}, "not in zone other.example", 1},
		{[]string{"--zone", "example.com", "--tsig-name", "sluice-key", "--tsig-secret", "not base64!"}, "not base64", 2},
		{[]string{"--zone", "example.com", "--tsig-algo", "md5"}, "--tsig-algo", 2},
		{[]string{}, "--zone ZONE is required", 2},
	} {
		out, errs, code := apply(c.args...)
		if code != c.code || !strings.Contains(errs, c.want) {
			t.Errorf("%v: exit %d, want %d with %q\n%s%s", c.args, code, c.code, c.want, out, errs)
		}
	}
	if srv.updates != 0 {
		t.Fatalf("%d updates applied by failed runs", srv.updates)
	}

	out, errs, code := apply(withKey...)
	if code != 0 || !strings.Contains(out, "updated zone example.com") {
		t.Fatalf("apply: exit %d\n%s%s", code, out, errs)
	}
	if srv.updates != 1 {
		t.Errorf("%d updates, want 1", srv.updates)
	}
	txt := strings.Join(srv.records("example.com", dns.TypeTXT), "|")
	if txt != "google-site-verification=abc|v=spf1 ip4:198.51.100.1 include:_spf.relay.example -all" {
		t.Errorf("apex TXT after apply: %s", txt)
	}
	if cn := srv.records("s7._domainkey.example.com", dns.TypeCNAME); len(cn) != 1 || cn[0] != "s7.example-com.dkim.relay.example." {
		t.Errorf("DKIM CNAME: %v", cn)
	}
	if txt := srv.records("s7._domainkey.example.com", dns.TypeTXT); len(txt) != 0 {
		t.Errorf("the old DKIM TXT is still there: %v", txt)
	}
	if d := srv.records("_dmarc.example.com", dns.TypeTXT); len(d) != 1 || !strings.HasPrefix(d[0], "v=DMARC1; p=none") {
		t.Errorf("DMARC: %v", d)
	}
	if mx := srv.records("bounces.example.com", dns.TypeMX); len(mx) != 1 || mx[0] != "mx.relay.example." {
		t.Errorf("return-path MX: %v", mx)
	}

	out, errs, code = apply(withKey...)
	if code != 0 || !strings.Contains(out, "nothing to change") || srv.updates != 1 {
		t.Errorf("second apply: exit %d, %d updates\n%s%s", code, srv.updates, out, errs)
	}
	// And `sluice dns check` agrees, through the same server.
	var cout, cerr bytes.Buffer
	if code := run([]string{"dns", "check", "example.com", "-c", cfg, "--resolver", srv.addr}, &cout, &cerr); code != 0 {
		t.Errorf("check after apply: exit %d\n%s%s", code, cout.String(), cerr.String())
	}
}
