package delivery_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/mtasts"
	"github.com/sluice-mta/sluice/internal/mtasts/ststest"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// daneEnv is an env whose resolver trusts the DNS server's AD bit, with
// DANE on.
func daneEnv(t testing.TB, port int) *env {
	t.Helper()
	e := newEnv(t, port)
	r, err := dnsx.New(dnsx.Options{Server: e.DNS.Addr(), Timeout: 2 * time.Second, DNSSEC: true})
	if err != nil {
		t.Fatal(err)
	}
	e.D.Resolver = r
	e.D.DANE = true
	return e
}

// mxTo publishes domain's MX host mx.DOMAIN at ip; secure marks the MX
// and address answers DNSSEC-authenticated.
func mxTo(e *env, domain, ip string, secure bool) string {
	mx := "mx." + domain
	e.DNS.AddMX(domain, 10, mx)
	e.DNS.AddA(mx, ip)
	e.DNS.SetSecure(secure, domain, mx)
	return mx
}

// tlsa publishes a TLSA record for host at the env's port.
func tlsa(e *env, host string, usage, selector uint8, data []byte, secure bool) {
	sum := sha256.Sum256(data)
	e.DNS.AddTLSA(host, e.D.Config.Port, usage, selector, 1, sum[:])
	e.DNS.SetSecure(secure, "_"+strconv.Itoa(e.D.Config.Port)+"._tcp."+host)
}

// deferredTLS checks that Dial to domain defers with enh, a message
// containing reason, and the RFC 8460 result in TLSRemote.
func deferredTLS(t *testing.T, e *env, route *pipeline.Route, domain, enh, reason, result string) {
	t.Helper()
	_, err := e.D.Dial(context.Background(), route, domain)
	pe := wantPE(t, err, 451, enh)
	if !strings.Contains(pe.Message, reason) {
		t.Fatalf("message %q does not contain %q", pe.Message, reason)
	}
	r := delivery.TLSRemote(err)
	if r == nil || r.TLSFailure != result || r.Host == "" {
		t.Fatalf("TLSRemote = %+v, want tls_failure %q", r, result)
	}
}

func sendTo(t *testing.T, e *env, route *pipeline.Route, domain string) pipeline.Remote {
	t.Helper()
	s := dial(t, e, route, domain)
	per, err := s.Send(context.Background(), "a@sender.test", []string{"b@" + domain}, message(300))
	if err != nil || per[0] != nil {
		t.Fatalf("Send = %v, %v", per, err)
	}
	return s.Remote()
}

// TestDANE delivers under DNSSEC-authenticated TLSA records (RFC 7672)
// to sinks on loopback: matching records deliver, mismatching ones
// defer, unauthenticated ones are ignored.
func TestDANE(t *testing.T) {
	ca := testutil.NewCA(t, "Test DANE TA")
	// DANE-EE ignores names: this certificate names no MX host.
	ee := testutil.SelfSignedCert(t, "unrelated.example")
	taGood := ca.Issue(t, "mx.ta.test")
	taWrong := ca.Issue(t, "mx.elsewhere.test")
	eeSink := newSink(t, testutil.SinkOptions{IP: "127.0.0.2", TLS: ee.TLS})
	port := eeSink.Port
	taSink := newSink(t, testutil.SinkOptions{IP: "127.0.0.3", Port: port, TLS: taGood.TLS})
	taWrongSink := newSink(t, testutil.SinkOptions{IP: "127.0.0.4", Port: port, TLS: taWrong.TLS})
	e := daneEnv(t, port)

	random := make([]byte, 64)
	rand.Read(random)
	mx := mxTo(e, "ee.test", "127.0.0.2", true)
	tlsa(e, mx, 3, 1, ee.Leaf.RawSubjectPublicKeyInfo, true)
	mx = mxTo(e, "ee-cert.test", "127.0.0.2", true)
	tlsa(e, mx, 3, 0, ee.Leaf.Raw, true)
	mx = mxTo(e, "ee-512.test", "127.0.0.2", true)
	sum512 := sha512.Sum512(ee.Leaf.RawSubjectPublicKeyInfo)
	e.DNS.AddTLSA(mx, port, 3, 1, 2, sum512[:])
	e.DNS.SetSecure(true, "_"+strconv.Itoa(port)+"._tcp."+mx)
	mx = mxTo(e, "ta.test", "127.0.0.3", true)
	tlsa(e, mx, 2, 0, ca.Leaf.Raw, true)
	mx = mxTo(e, "ta-name.test", "127.0.0.4", true)
	tlsa(e, mx, 2, 1, ca.Leaf.RawSubjectPublicKeyInfo, true)
	mx = mxTo(e, "mismatch.test", "127.0.0.2", true)
	tlsa(e, mx, 3, 1, random, true)
	tlsa(e, mx, 1, 1, ee.Leaf.RawSubjectPublicKeyInfo, true) // PKIX-EE: unusable for SMTP
	mx = mxTo(e, "unauth.test", "127.0.0.2", true)
	tlsa(e, mx, 3, 1, random, false)
	mx = mxTo(e, "insecure-mx.test", "127.0.0.2", false)
	tlsa(e, mx, 3, 1, random, true)
	mx = mxTo(e, "servfail.test", "127.0.0.2", true)
	e.DNS.SetServfail("_" + strconv.Itoa(port) + "._tcp." + mx)
	mx = mxTo(e, "unusable.test", "127.0.0.2", true)
	tlsa(e, mx, 0, 1, random, true)
	// Malformed (RFC 7671 section 4.1): a SHA-256 digest of 2 bytes can
	// match nothing; it is unusable, not a record that defers forever.
	mx = mxTo(e, "malformed.test", "127.0.0.2", true)
	e.DNS.AddTLSA(mx, port, 3, 1, 1, []byte{0xab, 0xcd})
	e.DNS.SetSecure(true, "_"+strconv.Itoa(port)+"._tcp."+mx)

	for _, domain := range []string{"ee.test", "ee-cert.test", "ee-512.test", "ta.test"} {
		t.Run("match "+domain, func(t *testing.T) {
			r := sendTo(t, e, pipeline.MX(), domain)
			if r.TLSPolicy != "dane" || !r.TLSValidated || r.TLS == "" || r.TLSFailure != "" {
				t.Fatalf("Remote() = %+v", r)
			}
		})
	}
	if len(eeSink.Messages()) != 3 || len(taSink.Messages()) != 1 {
		t.Fatalf("sinks got %d and %d messages, want 3 and 1", len(eeSink.Messages()), len(taSink.Messages()))
	}
	t.Run("mismatch defers", func(t *testing.T) {
		deferredTLS(t, e, pipeline.MX(), "mismatch.test", "4.7.5", "DANE: TLS handshake failed: certificate matches no TLSA record of mx.mismatch.test (3 1 1 ", "tlsa-invalid")
	})
	t.Run("DANE-TA chain for another name defers", func(t *testing.T) {
		deferredTLS(t, e, pipeline.MX(), "ta-name.test", "4.7.5", "does not validate for mx.ta-name.test", "certificate-host-mismatch")
		if n := len(taWrongSink.Messages()); n != 0 {
			t.Fatalf("sink got %d messages", n)
		}
	})
	t.Run("TLSA lookup failure defers", func(t *testing.T) {
		deferredTLS(t, e, pipeline.MX(), "servfail.test", "4.7.5", "DANE: TLSA lookup for mx.servfail.test failed", "dnssec-invalid")
	})
	if n := len(eeSink.Messages()); n != 3 {
		t.Fatalf("sink got %d messages after deferrals, want 3", n)
	}
	for _, domain := range []string{"unauth.test", "insecure-mx.test"} {
		t.Run("unauthenticated: ignored "+domain, func(t *testing.T) {
			r := sendTo(t, e, pipeline.MX(), domain)
			if r.TLSPolicy != "opportunistic" || r.TLSValidated || r.TLS == "" {
				t.Fatalf("Remote() = %+v", r)
			}
		})
	}
	for _, domain := range []string{"unusable.test", "malformed.test"} {
		t.Run("only unusable records: TLS without authentication "+domain, func(t *testing.T) {
			r := sendTo(t, e, pipeline.MX(), domain)
			if r.TLSPolicy != "dane" || r.TLSValidated || r.TLS == "" {
				t.Fatalf("Remote() = %+v", r)
			}
		})
	}
	t.Run("route tls none: no DANE", func(t *testing.T) {
		r := sendTo(t, e, &pipeline.Route{Kind: pipeline.RouteMX, TLS: "none"}, "mismatch.test")
		if r.TLSPolicy != "none" || r.TLS != "" {
			t.Fatalf("Remote() = %+v", r)
		}
	})
	t.Run("DANE off: records ignored", func(t *testing.T) {
		e.D.DANE = false
		defer func() { e.D.DANE = true }()
		r := sendTo(t, e, pipeline.MX(), "mismatch.test")
		if r.TLSPolicy != "opportunistic" {
			t.Fatalf("Remote() = %+v", r)
		}
	})
}

// TestSTARTTLSStripping puts a proxy that removes STARTTLS from the EHLO
// reply between the Dialer and a TLS sink: opportunistic TLS falls to
// clear text (which shows the proxy works), DANE and MTA-STS enforce
// defer without sending.
func TestSTARTTLSStripping(t *testing.T) {
	cert := testutil.SelfSignedCert(t, "mx.sts.test", "mx.dane.test", "mx.plain.test")
	sink := newSink(t, testutil.SinkOptions{IP: "127.0.0.2", TLS: cert.TLS})
	proxy := testutil.StartStripProxy(t, net.JoinHostPort("127.0.0.6", strconv.Itoa(sink.Port)), sink.Addr)
	e := daneEnv(t, sink.Port)
	e.D.TLSConfig = &tls.Config{RootCAs: cert.Pool}

	mx := mxTo(e, "dane.test", "127.0.0.6", true)
	tlsa(e, mx, 3, 1, cert.Leaf.RawSubjectPublicKeyInfo, true)
	mxTo(e, "sts.test", "127.0.0.6", false)
	mxTo(e, "plain.test", "127.0.0.6", false)
	sts := ststest.StartServer(t, "version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 86400\n", "mta-sts.sts.test")
	e.DNS.AddTXT("_mta-sts.sts.test", "v=STSv1; id=1")
	roots := x509.NewCertPool()
	roots.AddCert(sts.Cert.Leaf)
	e.D.MTASTS = &mtasts.Cache{Resolver: e.D.Resolver, RootCAs: roots, DialContext: sts.Dial}

	t.Run("opportunistic: clear text through the proxy", func(t *testing.T) {
		r := sendTo(t, e, pipeline.MX(), "plain.test")
		if r.TLS != "" || proxy.Stripped() == 0 {
			t.Fatalf("Remote() = %+v, stripped %d", r, proxy.Stripped())
		}
	})
	t.Run("DANE detects it", func(t *testing.T) {
		deferredTLS(t, e, pipeline.MX(), "dane.test", "4.7.10", "DANE: STARTTLS not offered", "starttls-not-supported")
	})
	t.Run("MTA-STS enforce detects it", func(t *testing.T) {
		deferredTLS(t, e, pipeline.MX(), "sts.test", "4.7.10", "MTA-STS (enforce): STARTTLS not offered", "starttls-not-supported")
	})
	if n := len(sink.Messages()); n != 1 {
		t.Fatalf("sink got %d messages, want only the opportunistic one", n)
	}
	t.Run("without the proxy DANE delivers", func(t *testing.T) {
		e.DNS.Remove("mx.dane.test")
		e.DNS.AddA("mx.dane.test", "127.0.0.2")
		e.DNS.SetSecure(true, "mx.dane.test")
		if r := sendTo(t, e, pipeline.MX(), "dane.test"); r.TLSPolicy != "dane" || !r.TLSValidated {
			t.Fatalf("Remote() = %+v", r)
		}
	})
}

// TestRouteTLSPolicies covers the verify and dane-or-mta-sts route
// policies.
func TestRouteTLSPolicies(t *testing.T) {
	ca := testutil.NewCA(t, "Test CA")
	good := ca.Issue(t, "mx.good.test")
	wrong := ca.Issue(t, "mx.other.test")
	goodSink := newSink(t, testutil.SinkOptions{IP: "127.0.0.2", TLS: good.TLS})
	newSink(t, testutil.SinkOptions{IP: "127.0.0.3", Port: goodSink.Port, TLS: wrong.TLS})
	e := daneEnv(t, goodSink.Port)
	e.D.TLSConfig = &tls.Config{RootCAs: ca.Pool}
	e.D.Config.TLSSkipVerify = true // verify ignores it
	mxTo(e, "good.test", "127.0.0.2", false)
	mxTo(e, "wrong.test", "127.0.0.3", false)
	mx := mxTo(e, "dane.test", "127.0.0.3", true)
	tlsa(e, mx, 3, 1, wrong.Leaf.RawSubjectPublicKeyInfo, true)
	verify := &pipeline.Route{Kind: pipeline.RouteMX, TLS: pipeline.TLSVerify}
	strict := &pipeline.Route{Kind: pipeline.RouteMX, TLS: pipeline.TLSDANEOrMTASTS}

	t.Run("verify, certificate for the MX host: delivered", func(t *testing.T) {
		if r := sendTo(t, e, verify, "good.test"); r.TLSPolicy != "verify" || !r.TLSValidated {
			t.Fatalf("Remote() = %+v", r)
		}
	})
	t.Run("verify, certificate for another name: deferred", func(t *testing.T) {
		deferredTLS(t, e, verify, "wrong.test", "4.7.5", "certificate is not valid for this host name", "certificate-host-mismatch")
	})
	t.Run("dane-or-mta-sts, neither published: deferred", func(t *testing.T) {
		deferredTLS(t, e, strict, "good.test", "4.7.5", "dane-or-mta-sts: mx.good.test has no DNSSEC-authenticated TLSA records and good.test no MTA-STS policy in enforce mode", "dane-required")
	})
	t.Run("dane-or-mta-sts, DANE: delivered", func(t *testing.T) {
		if r := sendTo(t, e, strict, "dane.test"); r.TLSPolicy != "dane" || !r.TLSValidated {
			t.Fatalf("Remote() = %+v", r)
		}
	})
	t.Run("dane-or-mta-sts on a relay route is refused", func(t *testing.T) {
		err := (&pipeline.Route{Kind: pipeline.RouteRelay, Host: "relay.test", TLS: pipeline.TLSDANEOrMTASTS}).Validate()
		if err == nil || !strings.Contains(err.Error(), "mx routes only") {
			t.Fatalf("Validate = %v", err)
		}
		err = (&pipeline.Route{Kind: pipeline.RouteMX, TLS: "strict"}).Validate()
		if err == nil || !strings.Contains(err.Error(), "verify, dane-or-mta-sts") {
			t.Fatalf("Validate = %v", err)
		}
	})
}

// BenchmarkTLSPlan measures the TLS policy evaluation a Dial does for an
// MX route with every answer cached (MX, A, TLSA in dnsx's cache, the
// MTA-STS policy in its own): off, MTA-STS only, DANE and MTA-STS.
func BenchmarkTLSPlan(b *testing.B) {
	e := daneEnv(b, 2525)
	e.DNS.SetTTL(3600)
	e.DNS.SetNegativeTTL(3600) // AAAA: NODATA, cached too
	e.DNS.AddMX("bench.test", 10, "mx.bench.test")
	e.DNS.AddA("mx.bench.test", "192.0.2.1")
	e.DNS.AddTLSA("mx.bench.test", 2525, 3, 1, 1, make([]byte, 32))
	e.DNS.SetSecure(true, "bench.test", "mx.bench.test", "_2525._tcp.mx.bench.test")
	e.DNS.AddTXT("_mta-sts.bench.test", "v=STSv1; id=1")
	sts := ststest.StartServer(b, "version: STSv1\nmode: enforce\nmx: mx.bench.test\nmax_age: 86400\n", "mta-sts.bench.test")
	cache := &mtasts.Cache{Resolver: e.D.Resolver, RootCAs: sts.Cert.Pool, DialContext: sts.Dial}
	ctx := context.Background()
	for _, c := range []struct {
		name   string
		sts    *mtasts.Cache
		dane   bool
		policy string
	}{{"off", nil, false, "opportunistic"}, {"mta-sts", cache, false, "mta-sts"}, {"dane+mta-sts", cache, true, "dane"}} {
		b.Run(c.name, func(b *testing.B) {
			e.D.MTASTS, e.D.DANE = c.sts, c.dane
			if p := e.D.TLSPlan(ctx, pipeline.MX(), "bench.test"); len(p.Hosts) != 1 || p.Hosts[0].Policy != c.policy {
				b.Fatalf("plan = %+v", p)
			}
			q := e.DNS.Queries()
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				e.D.TLSPlan(ctx, pipeline.MX(), "bench.test")
			}
			b.StopTimer()
			if n := e.DNS.Queries() - q; n > 0 {
				b.Fatalf("%d DNS queries during the run: answers not cached", n)
			}
		})
	}
}

// BenchmarkDialTLS measures a whole Dial (TCP, EHLO, STARTTLS, the
// handshake, EHLO) to a loopback sink and its QUIT: opportunistic TLS
// against DANE-EE with the records cached, to show what matching the
// records adds to a connection.
func BenchmarkDialTLS(b *testing.B) {
	cert := testutil.SelfSignedCert(b, "mx.bench.test")
	sink := newSink(b, testutil.SinkOptions{IP: "127.0.0.2", TLS: cert.TLS})
	e := daneEnv(b, sink.Port)
	e.DNS.SetTTL(3600)
	e.DNS.SetNegativeTTL(3600) // AAAA: NODATA, cached too
	e.DNS.AddMX("bench.test", 10, "mx.bench.test")
	e.DNS.AddA("mx.bench.test", "127.0.0.2")
	sum := sha256.Sum256(cert.Leaf.RawSubjectPublicKeyInfo)
	e.DNS.AddTLSA("mx.bench.test", sink.Port, 3, 1, 1, sum[:])
	e.DNS.SetSecure(true, "bench.test", "mx.bench.test", "_"+strconv.Itoa(sink.Port)+"._tcp.mx.bench.test")
	ctx := context.Background()
	for _, c := range []struct {
		name   string
		dane   bool
		policy string
	}{{"opportunistic", false, "opportunistic"}, {"dane", true, "dane"}} {
		b.Run(c.name, func(b *testing.B) {
			e.D.DANE = c.dane
			b.ReportAllocs()
			for range b.N {
				s, err := e.D.Dial(ctx, pipeline.MX(), "bench.test")
				if err != nil {
					b.Fatal(err)
				}
				if s.Remote().TLSPolicy != c.policy {
					b.Fatalf("policy %q", s.Remote().TLSPolicy)
				}
				s.Close()
			}
		})
	}
}
