package dnsx_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
)

// TestLookupTLSA reads TLSA records and the resolver's AD bit, which
// counts only with Options.DNSSEC, and stays with a cached answer.
func TestLookupTLSA(t *testing.T) {
	s := dnstest.NewServer(t)
	s.SetTTL(300)
	data := bytes.Repeat([]byte{0xab}, 32)
	s.AddTLSA("mx.secure.test", 25, 3, 1, 1, data)
	s.AddTLSA("mx.insecure.test", 25, 2, 0, 1, data)
	s.AddA("mx.secure.test", "192.0.2.1")
	s.SetSecure(true, "_25._tcp.mx.secure.test", "mx.secure.test")
	ctx := context.Background()

	c := newClient(t, s, dnsx.Options{DNSSEC: true})
	for range 2 { // the second answer comes from the cache
		res, err := c.LookupTLSA(ctx, "MX.Secure.Test.", 25)
		if err != nil || len(res.Records) != 1 || !res.Authenticated {
			t.Fatalf("LookupTLSA = %+v, %v", res, err)
		}
		if r := res.Records[0]; r.Usage != 3 || r.Selector != 1 || r.MatchingType != 1 || !bytes.Equal(r.Data, data) {
			t.Fatalf("record = %v", r)
		}
	}
	if q := s.Queries(); q != 1 {
		t.Fatalf("server saw %d queries, want 1 (cached)", q)
	}
	if res, err := c.LookupHost(ctx, "mx.secure.test"); err != nil || !res.Authenticated {
		t.Fatalf("LookupHost = %+v, %v", res, err)
	}
	res, err := c.LookupTLSA(ctx, "mx.insecure.test", 25)
	if err != nil || res.Authenticated || res.Records[0].String() != "2 0 1 "+string(bytes.Repeat([]byte("ab"), 32)) {
		t.Fatalf("LookupTLSA(insecure) = %+v, %v", res, err)
	}
	if _, err := c.LookupTLSA(ctx, "mx.secure.test", 587); !dnsx.IsNotFound(err) {
		t.Fatalf("LookupTLSA(port 587) err = %v, want NXDOMAIN", err)
	}
	if _, err := c.LookupTLSA(ctx, "mx.secure.test", 0); err == nil {
		t.Fatal("port 0 accepted")
	}

	plain := newClient(t, s, dnsx.Options{})
	if res, err := plain.LookupTLSA(ctx, "mx.secure.test", 25); err != nil || res.Authenticated {
		t.Fatalf("without DNSSEC: LookupTLSA = %+v, %v (AD must not count)", res, err)
	}
}
