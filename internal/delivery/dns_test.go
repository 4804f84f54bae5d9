package delivery_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// fakeDNS is a dnsx.Resolver that answers from maps. A value is a result
// or an error; a name that is in neither map is NXDOMAIN.
type fakeDNS struct {
	mx    map[string]any // dnsx.Result[dnsx.MX] or error
	hosts map[string]any // dnsx.Result[netip.Addr] or error
}

var _ dnsx.Resolver = (*fakeDNS)(nil)

func answer[T any](m map[string]any, name, typ string) (dnsx.Result[T], error) {
	switch v := m[name].(type) {
	case dnsx.Result[T]:
		return v, nil
	case error:
		return dnsx.Result[T]{}, v
	}
	return dnsx.Result[T]{}, fmt.Errorf("%w: %s %s", dnsx.ErrNotFound, name, typ)
}

func (f *fakeDNS) LookupMX(_ context.Context, domain string) (dnsx.Result[dnsx.MX], error) {
	return answer[dnsx.MX](f.mx, domain, "MX")
}

func (f *fakeDNS) LookupHost(_ context.Context, host string) (dnsx.Result[netip.Addr], error) {
	return answer[netip.Addr](f.hosts, host, "A")
}

func (f *fakeDNS) LookupTXT(_ context.Context, name string) (dnsx.Result[string], error) {
	return dnsx.Result[string]{}, fmt.Errorf("%w: %s TXT", dnsx.ErrNoData, name)
}

func mxs(hosts ...string) dnsx.Result[dnsx.MX] {
	r := dnsx.Result[dnsx.MX]{TTL: time.Minute}
	for i, h := range hosts {
		r.Records = append(r.Records, dnsx.MX{Host: h, Pref: uint16(10 * (i + 1))})
	}
	return r
}

func ips(ss ...string) dnsx.Result[netip.Addr] {
	r := dnsx.Result[netip.Addr]{TTL: time.Minute}
	for _, s := range ss {
		r.Records = append(r.Records, netip.MustParseAddr(s))
	}
	return r
}

// TestDNSOutcomes shows the SMTP meaning delivery gives each DNS outcome,
// for the recipient domain's MX lookup, for an MX host's (or the implicit
// MX's) addresses, and for a relay host's addresses.
func TestDNSOutcomes(t *testing.T) {
	sk := newSink(t, testutil.SinkOptions{}) // 127.0.0.2
	temp := func(name, typ, reason string, err error) error {
		return &dnsx.TemporaryError{Name: name, Type: typ, Server: "192.0.2.53:53", Reason: reason, Err: err}
	}
	nxdomain := func(name string) error { return fmt.Errorf("%w: %s", dnsx.ErrNotFound, name) }
	nodata := func(name string) error { return fmt.Errorf("%w: %s", dnsx.ErrNoData, name) }
	invalid := fmt.Errorf("%w: %q", dnsx.ErrInvalidName, "bad..test")
	policy := &pipeline.Error{Code: 554, Enhanced: pipeline.EnhancedCode{5, 7, 1}, Message: "resolver policy says no"}

	relay := func(host string) *pipeline.Route {
		return &pipeline.Route{Kind: pipeline.RouteRelay, Host: host, Port: sk.Port}
	}
	tests := []struct {
		name    string
		route   *pipeline.Route // nil: MX
		domain  string
		mx      any
		hosts   map[string]any
		code    int // 0: Dial succeeds and reaches wantIP's host
		enh     string
		text    string
		is      error // errors.Is(err, is) must hold
		tries   int   // attempts in the DialError; 0 = none
		success string
	}{
		// The recipient domain's MX lookup.
		{name: "MX NXDOMAIN bounces", domain: "d.test", mx: nxdomain("d.test MX"),
			code: 550, enh: "5.1.2", text: "d.test: domain does not exist", is: dnsx.ErrNotFound},
		{name: "MX invalid name bounces", domain: "bad..test", mx: invalid,
			code: 550, enh: "5.1.2", text: `"bad..test": invalid domain name`, is: dnsx.ErrInvalidName},
		{name: "MX SERVFAIL defers", domain: "d.test", mx: temp("d.test", "MX", "SERVFAIL", nil),
			code: 451, enh: "4.4.3", text: "DNS lookup of d.test MX failed: SERVFAIL"},
		{name: "MX timeout defers", domain: "d.test", mx: temp("d.test", "MX", "timeout", context.DeadlineExceeded),
			code: 451, enh: "4.4.3", text: "DNS lookup of d.test MX failed: timeout", is: context.DeadlineExceeded},
		{name: "MX unknown error defers", domain: "d.test", mx: errors.New("resolver exploded"),
			code: 451, enh: "4.4.3", text: "DNS lookup failed"},
		{name: "MX resolver's own reply kept", domain: "d.test", mx: policy,
			code: 554, enh: "5.7.1", text: "resolver policy says no"},
		{name: "null MX bounces at once", domain: "d.test", mx: mxs("."),
			hosts: map[string]any{"d.test": ips("127.0.0.2")},
			code:  556, enh: "5.1.10", text: "d.test does not accept mail (null MX)"},
		{name: "null MX among others is ignored", domain: "d.test", mx: mxs(".", "mx.d.test"),
			hosts: map[string]any{"mx.d.test": ips("127.0.0.2")}, success: "mx.d.test"},

		// NODATA for MX: the implicit MX (RFC 5321 section 5.1).
		{name: "implicit MX", domain: "d.test", mx: nodata("d.test MX"),
			hosts: map[string]any{"d.test": ips("127.0.0.2")}, success: "d.test"},
		{name: "implicit MX without addresses bounces", domain: "d.test", mx: nodata("d.test MX"),
			hosts: map[string]any{"d.test": nodata("d.test A")},
			code:  550, enh: "5.4.4", text: "d.test has no MX or address records", tries: 1},
		{name: "implicit MX vanished bounces", domain: "d.test", mx: nodata("d.test MX"),
			code: 550, enh: "5.4.4", text: "d.test has no MX or address records", tries: 1, is: dnsx.ErrNotFound},
		{name: "implicit MX address lookup timeout defers", domain: "d.test", mx: nodata("d.test MX"),
			hosts: map[string]any{"d.test": temp("d.test", "A", "timeout", nil)},
			code:  451, enh: "4.4.3", text: "d.test: DNS lookup of d.test A failed: timeout", tries: 1},

		// An MX host's addresses.
		{name: "MX host NXDOMAIN bounces", domain: "d.test", mx: mxs("mx.d.test"),
			code: 550, enh: "5.4.4", text: "MX host mx.d.test does not exist", tries: 1, is: dnsx.ErrNotFound},
		{name: "MX host NODATA bounces", domain: "d.test", mx: mxs("mx.d.test"),
			hosts: map[string]any{"mx.d.test": nodata("mx.d.test A")},
			code:  550, enh: "5.4.4", text: "MX host mx.d.test has no address", tries: 1},
		{name: "MX host SERVFAIL defers", domain: "d.test", mx: mxs("mx.d.test"),
			hosts: map[string]any{"mx.d.test": temp("mx.d.test", "AAAA", "SERVFAIL", nil)},
			code:  451, enh: "4.4.3", text: "DNS lookup of mx.d.test AAAA failed: SERVFAIL", tries: 1},
		{name: "MX host failures: temporary wins", domain: "d.test", mx: mxs("mx1.d.test", "mx2.d.test"),
			hosts: map[string]any{"mx1.d.test": temp("mx1.d.test", "A", "timeout", nil)},
			code:  451, enh: "4.4.3", text: "all MX hosts for d.test failed (2 tried); last: mx1.d.test: DNS lookup of mx1.d.test A failed: timeout", tries: 2},
		{name: "MX host NXDOMAIN, next one works", domain: "d.test", mx: mxs("gone.d.test", "mx.d.test"),
			hosts: map[string]any{"mx.d.test": ips("127.0.0.2")}, success: "mx.d.test"},

		// A relay's name: never a bounce.
		{name: "relay NXDOMAIN defers", route: relay("smart.test"), domain: "d.test",
			code: 451, enh: "4.4.3", text: "smart.test: domain does not exist", tries: 1, is: dnsx.ErrNotFound},
		{name: "relay NODATA defers", route: relay("smart.test"), domain: "d.test",
			hosts: map[string]any{"smart.test": nodata("smart.test A")},
			code:  451, enh: "4.4.4", text: "relay host smart.test has no address", tries: 1},
		{name: "relay SERVFAIL defers", route: relay("smart.test"), domain: "d.test",
			hosts: map[string]any{"smart.test": temp("smart.test", "A", "SERVFAIL", nil)},
			code:  451, enh: "4.4.3", text: "DNS lookup of smart.test A failed: SERVFAIL", tries: 1},
		{name: "relay invalid name defers", route: relay("bad..test"), domain: "d.test",
			hosts: map[string]any{"bad..test": invalid},
			code:  451, enh: "4.4.3", text: "invalid domain name", tries: 1, is: dnsx.ErrInvalidName},
		{name: "relay resolves", route: relay("smart.test"), domain: "d.test",
			hosts: map[string]any{"smart.test": ips("127.0.0.2")}, success: "smart.test"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeDNS{mx: map[string]any{tt.domain: tt.mx}, hosts: tt.hosts}
			d := delivery.NewDialer(config.Delivery{Hostname: "sluice.test", Port: sk.Port,
				ConnectTimeout: 2 * time.Second, CommandTimeout: 5 * time.Second}, f)
			route := tt.route
			if route == nil {
				route = pipeline.MX()
			}
			before := sk.Conns()
			s, err := d.Dial(context.Background(), route, tt.domain)
			if tt.success != "" {
				if err != nil {
					t.Fatalf("Dial: %v", err)
				}
				defer s.Close()
				if r := s.Remote(); r.Host != tt.success || r.IP != "127.0.0.2" {
					t.Fatalf("Remote() = %+v, want %s [127.0.0.2]", r, tt.success)
				}
				return
			}
			if err == nil {
				s.Close()
				t.Fatalf("Dial succeeded to %+v", s.Remote())
			}
			pe := wantPE(t, err, tt.code, tt.enh)
			if !strings.Contains(pe.Message, tt.text) {
				t.Fatalf("message %q does not contain %q", pe.Message, tt.text)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Fatalf("err %v does not wrap %v", err, tt.is)
			}
			var de *delivery.DialError
			if got := errors.As(err, &de); got != (tt.tries > 0) || (got && len(de.Attempts) != tt.tries) {
				t.Fatalf("DialError = %v (%v), want %d attempts", de, got, tt.tries)
			}
			if sk.Conns() != before {
				t.Fatal("the sink was contacted")
			}
		})
	}
}

// TestDialDNSTimeout runs a real timeout through dnsx.Client: the
// recipient's domain is deferred, not bounced.
func TestDialDNSTimeout(t *testing.T) {
	e := newEnv(t, 1)
	e.DNS.SetTimeout("slow.test")
	r, err := dnsx.New(dnsx.Options{Server: e.DNS.Addr(), Timeout: 100 * time.Millisecond, Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	e.D.Resolver = r
	_, err = e.D.Dial(context.Background(), pipeline.MX(), "slow.test")
	pe := wantPE(t, err, 451, "4.4.3")
	if pe.Message != "DNS lookup of slow.test MX failed: timeout" {
		t.Fatalf("message %q", pe.Message)
	}
	var te *dnsx.TemporaryError
	if !errors.As(err, &te) || !te.Timeout() {
		t.Fatalf("err %v does not carry the dnsx timeout", err)
	}
}

// TestImplicitMXThroughCNAME: a domain that is a CNAME to a host without
// MX records is delivered to that host's address (RFC 5321 section 5.1).
func TestImplicitMXThroughCNAME(t *testing.T) {
	sk := newSink(t, testutil.SinkOptions{})
	e := newEnv(t, sk.Port)
	e.DNS.AddCNAME("alias.test", "host.test")
	e.DNS.AddA("host.test", "127.0.0.2")
	s := dial(t, e, pipeline.MX(), "alias.test")
	if r := s.Remote(); r.Host != "alias.test" || r.IP != "127.0.0.2" {
		t.Fatalf("Remote() = %+v", r)
	}
}
