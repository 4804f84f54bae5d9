package delivery_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/internal/bounce"
	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/mtasts"
	"github.com/sluice-mta/sluice/internal/mtasts/ststest"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestREQUIRETLS delivers REQUIRETLS messages (RFC 8689) to sinks with and
// without REQUIRETLS, with and without a certificate a policy validated.
func TestREQUIRETLS(t *testing.T) {
	cert := testutil.SelfSignedCert(t, "mx.rt.test", "mx.nort.test", "mx.nopolicy.test", "mx.optional.test", "relay.test")
	other := testutil.SelfSignedCert(t, "other.test")
	rtSink := newSink(t, testutil.SinkOptions{IP: "127.0.0.2", TLS: cert.TLS, RequireTLS: true})
	noRTSink := newSink(t, testutil.SinkOptions{IP: "127.0.0.3", Port: rtSink.Port, TLS: cert.TLS})
	wrongSink := newSink(t, testutil.SinkOptions{IP: "127.0.0.4", Port: rtSink.Port, TLS: other.TLS, RequireTLS: true})
	plainSink := newSink(t, testutil.SinkOptions{IP: "127.0.0.5", Port: rtSink.Port, RequireTLS: true})
	e := newEnv(t, rtSink.Port)
	roots := x509.NewCertPool()
	roots.AddCert(cert.Leaf)
	e.D.TLSConfig = &tls.Config{RootCAs: roots}

	servers := map[string]*ststest.Server{}
	for _, domain := range []string{"rt.test", "nort.test", "optional.test"} {
		body := "version: STSv1\nmode: enforce\nmx: mx." + domain + "\nmax_age: 86400\n"
		servers["mta-sts."+domain] = ststest.StartServer(t, body, "mta-sts."+domain)
		roots.AddCert(servers["mta-sts."+domain].Cert.Leaf)
		e.DNS.AddTXT("_mta-sts."+domain, "v=STSv1; id=1")
	}
	for domain, ip := range map[string]string{"rt.test": "127.0.0.2", "nort.test": "127.0.0.3",
		"nopolicy.test": "127.0.0.2", "optional.test": "127.0.0.4", "plain.test": "127.0.0.5"} {
		e.DNS.AddMX(domain, 10, "mx."+domain)
		e.DNS.AddA("mx."+domain, ip)
	}
	e.DNS.AddA("relay.test", "127.0.0.2")
	e.D.MTASTS = &mtasts.Cache{Resolver: e.D.Resolver, RootCAs: roots,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, _ := net.SplitHostPort(addr)
			return servers[host].Dial(ctx, network, addr)
		}}
	ctx := context.Background()
	rt := delivery.Egress{RequireTLS: true}
	envelope := func(from, to string) *delivery.Envelope {
		return &delivery.Envelope{From: from, Params: pipeline.MailParams{RequireTLS: true}, Rcpts: []delivery.Rcpt{{Addr: to}}}
	}
	deliver := func(t *testing.T, s *delivery.Session, env *delivery.Envelope) error {
		t.Helper()
		res, err := s.Deliver(ctx, env, message(300))
		if err != nil {
			t.Fatalf("Deliver: %v", err)
		}
		return res[0].Err
	}
	refused := func(t *testing.T, route *pipeline.Route, domain, reason string) {
		t.Helper()
		_, err := e.D.DialFrom(ctx, route, domain, rt)
		pe := wantPE(t, err, 550, "5.7.30")
		if !strings.Contains(pe.Message, "REQUIRETLS support required") || !strings.Contains(pe.Message, reason) {
			t.Fatalf("message %q: want REQUIRETLS support required and %q", pe.Message, reason)
		}
	}
	t.Run("no TLS at all: 5.7.10", func(t *testing.T) {
		_, err := e.D.DialFrom(ctx, pipeline.MX(), "plain.test", rt)
		if pe := wantPE(t, err, 550, "5.7.10"); !strings.Contains(pe.Message, "encryption needed, no TLS with mx.plain.test") {
			t.Fatalf("message %q", pe.Message)
		}
	})

	t.Run("MTA-STS enforce, hop offers REQUIRETLS: delivered with it", func(t *testing.T) {
		s, err := e.D.DialFrom(ctx, pipeline.MX(), "rt.test", rt)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if err := deliver(t, s, envelope("a@sender.test", "b@rt.test")); err != nil {
			t.Fatal(err)
		}
		msgs := rtSink.Messages()
		if len(msgs) != 1 || !msgs[0].Opts.RequireTLS {
			t.Fatalf("sink got %d messages, REQUIRETLS on MAIL: %v", len(msgs), len(msgs) == 1 && msgs[0].Opts.RequireTLS)
		}
	})
	t.Run("hop without REQUIRETLS: 5.7.30", func(t *testing.T) {
		refused(t, pipeline.MX(), "nort.test", "mx.nort.test does not offer REQUIRETLS")
	})
	t.Run("no MTA-STS policy (certificate valid all the same): 5.7.30", func(t *testing.T) {
		refused(t, pipeline.MX(), "nopolicy.test", "no MTA-STS policy in enforce mode or DANE")
	})
	t.Run("relay route, tls required, verified certificate: delivered", func(t *testing.T) {
		s, err := e.D.DialFrom(ctx, &pipeline.Route{Kind: pipeline.RouteRelay, Host: "relay.test", Port: rtSink.Port, TLS: pipeline.TLSRequired}, "anywhere.test", rt)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if err := deliver(t, s, envelope("a@sender.test", "b@anywhere.test")); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("relay route, opportunistic TLS: 5.7.30", func(t *testing.T) {
		refused(t, &pipeline.Route{Kind: pipeline.RouteRelay, Host: "relay.test", Port: rtSink.Port}, "anywhere.test", `TLS policy "opportunistic"`)
	})
	t.Run("session not checked for REQUIRETLS: every recipient refused, nothing sent", func(t *testing.T) {
		before := len(rtSink.Messages())
		s := dial(t, e, pipeline.MX(), "nopolicy.test")
		wantPE(t, deliver(t, s, envelope("a@sender.test", "b@nopolicy.test")), 550, "5.7.30")
		if len(rtSink.Messages()) != before {
			t.Fatal("the sink got the message")
		}
		// A client's message from the null sender gets no exemption.
		wantPE(t, deliver(t, s, envelope("", "b@nopolicy.test")), 550, "5.7.30")
		if len(rtSink.Messages()) != before {
			t.Fatal("the sink got a client's null-sender REQUIRETLS message")
		}
		// A DSN of our own about a REQUIRETLS message goes without (RFC
		// 8689 section 5: not discarded for that).
		dsn := envelope("", "b@nopolicy.test")
		dsn.OwnReport = true
		if err := deliver(t, s, dsn); err != nil {
			t.Fatal(err)
		}
		msgs := rtSink.Messages()
		if len(msgs) != before+1 || msgs[len(msgs)-1].Opts.RequireTLS {
			t.Fatalf("DSN not delivered without REQUIRETLS: %+v", msgs[before:])
		}
	})
	t.Run("TLS-Required: No ignores the MTA-STS policy", func(t *testing.T) {
		_, err := e.D.Dial(ctx, pipeline.MX(), "optional.test")
		wantPE(t, err, 451, "4.7.5") // the certificate does not match
		s, err := e.D.DialFrom(ctx, pipeline.MX(), "optional.test", delivery.Egress{IgnoreTLSPolicy: true})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if r := s.Remote(); r.TLSPolicy != pipeline.TLSOpportunistic || r.TLS == "" {
			t.Fatalf("Remote() = %+v", r)
		}
		if per, err := s.Send(ctx, "a@sender.test", []string{"b@optional.test"}, message(300)); err != nil || per[0] != nil {
			t.Fatal(per, err)
		}
		if n := len(wrongSink.Messages()); n != 1 {
			t.Fatalf("sink got %d messages", n)
		}
		// REQUIRETLS wins over TLS-Required: No.
		_, err = e.D.DialFrom(ctx, pipeline.MX(), "optional.test", delivery.Egress{IgnoreTLSPolicy: true, RequireTLS: true})
		wantPE(t, err, 451, "4.7.5")
		// A route that demands DANE or MTA-STS cannot honour TLS-Required:
		// No, now or on any retry: a permanent failure that says so (not
		// that the domain has no policy), classed PolicyRelated.
		_, err = e.D.DialFrom(ctx, &pipeline.Route{Kind: pipeline.RouteMX, TLS: pipeline.TLSDANEOrMTASTS}, "optional.test", delivery.Egress{IgnoreTLSPolicy: true})
		pe := wantPE(t, err, 550, "5.7.1")
		if !strings.Contains(pe.Message, "TLS-Required: No") || !strings.Contains(pe.Message, "dane-or-mta-sts") {
			t.Fatalf("failure %q does not name TLS-Required: No and the route's policy", pe.Message)
		}
		if c := bounce.Default().Classify(pe.Code, pe.EnhancedOrDefault().String(), pe.Message); c != bounce.PolicyRelated {
			t.Fatalf("bounce class %s, want %s", c, bounce.PolicyRelated)
		}
	})
	if len(noRTSink.Messages())+len(plainSink.Messages()) != 0 {
		t.Fatal("a hop without REQUIRETLS got a REQUIRETLS message")
	}
}

// BenchmarkDeliverREQUIRETLS2KB: one 2 KB message per Deliver over one
// TLS session (relay route, tls = "required", a sink that offers
// REQUIRETLS), without and with REQUIRETLS: the flag's cost per message.
func BenchmarkDeliverREQUIRETLS2KB(b *testing.B) {
	cert := testutil.SelfSignedCert(b, "relay.test")
	sk := newSink(b, testutil.SinkOptions{TLS: cert.TLS, RequireTLS: true})
	sk.OnData = func(_ *smtp.Conn, r io.Reader) error {
		_, err := io.Copy(io.Discard, r)
		return err
	}
	e := newEnv(b, sk.Port)
	e.D.TLSConfig = &tls.Config{RootCAs: cert.Pool}
	e.DNS.AddA("relay.test", sk.IP)
	route := &pipeline.Route{Kind: pipeline.RouteRelay, Host: "relay.test", Port: sk.Port, TLS: pipeline.TLSRequired}
	data := message(2048)
	ctx := context.Background()
	for _, requireTLS := range []bool{false, true} {
		name := "plain"
		if requireTLS {
			name = "requiretls"
		}
		b.Run(name, func(b *testing.B) {
			s, err := e.D.DialFrom(ctx, route, "example.test", delivery.Egress{RequireTLS: requireTLS})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			env := &delivery.Envelope{From: "app@sender.test", Params: pipeline.MailParams{RequireTLS: requireTLS},
				Rcpts: []delivery.Rcpt{{Addr: "bob@example.test"}}}
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				res, err := s.Deliver(ctx, env, data)
				if err != nil || res[0].Err != nil {
					b.Fatalf("Deliver = %v, %v", res, err)
				}
			}
		})
	}
}
