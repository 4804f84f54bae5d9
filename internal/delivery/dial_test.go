package delivery_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

func TestMXPreferenceFirstDown(t *testing.T) {
	sk := newSink(t, testutil.SinkOptions{IP: "127.0.0.2"})
	e := newEnv(t, sk.Port)
	// mx1 (preferred) has nothing listening; mx2 is the sink.
	e.DNS.AddMX("example.test", 10, "mx1.example.test")
	e.DNS.AddMX("example.test", 20, "mx2.example.test")
	e.DNS.AddA("mx1.example.test", "127.0.0.3")
	e.DNS.AddA("mx2.example.test", "127.0.0.2")

	s := dial(t, e, pipeline.MX(), "example.test")
	if r := s.Remote(); r.Host != "mx2.example.test" || r.IP != "127.0.0.2" || r.TLS != "" {
		t.Fatalf("Remote() = %+v, want mx2.example.test 127.0.0.2 clear text", r)
	}
	per, err := s.Send(context.Background(), "app@sender.test", []string{"bob@example.test"}, message(500))
	if err != nil || per[0] != nil {
		t.Fatalf("Send = %v, %v", per, err)
	}
	if n := len(sk.Messages()); n != 1 {
		t.Fatalf("sink got %d messages, want 1", n)
	}
}

func TestMXPreferenceOrder(t *testing.T) {
	a := newSink(t, testutil.SinkOptions{IP: "127.0.0.2"})
	b := newSink(t, testutil.SinkOptions{IP: "127.0.0.4", Port: a.Port})
	e := newEnv(t, a.Port)
	// Listed worst first: the Dialer must sort.
	e.DNS.AddMX("example.test", 50, "backup.example.test")
	e.DNS.AddMX("example.test", 5, "primary.example.test")
	e.DNS.AddA("backup.example.test", "127.0.0.4")
	e.DNS.AddA("primary.example.test", "127.0.0.2")
	for i := 0; i < 5; i++ {
		s := dial(t, e, pipeline.MX(), "example.test")
		if s.Remote().Host != "primary.example.test" {
			t.Fatalf("dial %d went to %s", i, s.Remote().Host)
		}
		s.Close()
	}
	if a.Conns() != 5 || b.Conns() != 0 {
		t.Fatalf("connections: primary %d, backup %d; want 5, 0", a.Conns(), b.Conns())
	}
}

func TestMXEqualPreferenceShuffled(t *testing.T) {
	a := newSink(t, testutil.SinkOptions{IP: "127.0.0.2"})
	b := newSink(t, testutil.SinkOptions{IP: "127.0.0.4", Port: a.Port})
	e := newEnv(t, a.Port)
	e.DNS.AddMX("example.test", 10, "a.example.test")
	e.DNS.AddMX("example.test", 10, "b.example.test")
	e.DNS.AddA("a.example.test", "127.0.0.2")
	e.DNS.AddA("b.example.test", "127.0.0.4")
	// The chance that 40 shuffles all pick the same host is 2^-39.
	for i := 0; i < 40 && (a.Conns() == 0 || b.Conns() == 0); i++ {
		s := dial(t, e, pipeline.MX(), "example.test")
		s.Close()
	}
	if a.Conns() == 0 || b.Conns() == 0 {
		t.Fatalf("equal preferences not spread: a %d, b %d", a.Conns(), b.Conns())
	}
}

func TestImplicitMX(t *testing.T) {
	sk := newSink(t, testutil.SinkOptions{})
	e := newEnv(t, sk.Port)
	e.DNS.AddA("plain.test", "127.0.0.2")
	s := dial(t, e, pipeline.MX(), "plain.test")
	if r := s.Remote(); r.Host != "plain.test" || r.IP != "127.0.0.2" {
		t.Fatalf("Remote() = %+v", r)
	}
}

func TestAddressLiteralDomain(t *testing.T) {
	sk := newSink(t, testutil.SinkOptions{})
	e := newEnv(t, sk.Port)
	s := dial(t, e, pipeline.MX(), "[127.0.0.2]")
	if r := s.Remote(); r.IP != "127.0.0.2" {
		t.Fatalf("Remote() = %+v", r)
	}
	if e.DNS.Queries() != 0 {
		t.Fatalf("an address literal caused %d DNS queries", e.DNS.Queries())
	}
}

func TestDialFailures(t *testing.T) {
	sk := newSink(t, testutil.SinkOptions{})
	// A server that refuses service in its greeting.
	refusing := newScripted(t, "127.0.0.5", sk.Port, func(p *peer) {
		p.send("554 5.7.1 no service for you")
		p.read() // QUIT, maybe
	})
	busy := newScripted(t, "127.0.0.6", sk.Port, func(p *peer) {
		p.send("421 4.3.2 too busy, try later")
	})
	e := newEnv(t, sk.Port)
	d := e.DNS
	d.SetNullMX("null.test")
	d.AddA("null.test", "127.0.0.2") // must not be used
	d.SetServfail("servfail.test")
	d.AddTXT("noaddr.test", "v=spf1 -all") // exists, no MX, no A
	d.AddMX("ghostmx.test", 10, "ghost.ghostmx.test")
	d.AddMX("badmx.test", 10, "mx.badmx.test")
	d.SetServfail("mx.badmx.test")
	d.AddMX("down.test", 10, "mx1.down.test")
	d.AddMX("down.test", 20, "mx2.down.test")
	d.AddA("mx1.down.test", "127.0.0.3")
	d.AddA("mx2.down.test", "127.0.0.7")
	d.AddMX("refused.test", 10, "mx.refused.test")
	d.AddA("mx.refused.test", "127.0.0.5")
	d.AddMX("mixed.test", 10, "mx1.mixed.test")
	d.AddMX("mixed.test", 20, "mx2.mixed.test")
	d.AddA("mx1.mixed.test", "127.0.0.5") // 554
	d.AddA("mx2.mixed.test", "127.0.0.3") // down
	d.AddMX("busy.test", 10, "mx.busy.test")
	d.AddA("mx.busy.test", "127.0.0.6")
	d.AddMX("fallback.test", 10, "mx1.fallback.test")
	d.AddMX("fallback.test", 20, "mx2.fallback.test")
	d.AddA("mx1.fallback.test", "127.0.0.5") // 554
	d.AddA("mx2.fallback.test", "127.0.0.2") // sink

	tests := []struct {
		domain string
		code   int
		enh    string
		text   string // substring of the message
		tries  int    // attempts in the DialError; 0 = no DialError
	}{
		{domain: "null.test", code: 556, enh: "5.1.10", text: "null MX"},
		{domain: "nxdomain.test", code: 550, enh: "5.1.2", text: "does not exist"},
		{domain: "servfail.test", code: 451, enh: "4.4.3", text: "SERVFAIL"},
		{domain: "noaddr.test", code: 550, enh: "5.4.4", text: "no MX or address records", tries: 1},
		{domain: "ghostmx.test", code: 550, enh: "5.4.4", text: "ghost.ghostmx.test does not exist", tries: 1},
		{domain: "badmx.test", code: 451, enh: "4.4.3", text: "mx.badmx.test", tries: 1},
		{domain: "down.test", code: 451, enh: "4.4.1", text: "all MX hosts for down.test failed (2 tried); last: mx2.down.test [127.0.0.7]: cannot connect: connection refused", tries: 2},
		{domain: "refused.test", code: 554, enh: "5.7.1", text: "no service for you", tries: 1},
		{domain: "mixed.test", code: 451, enh: "4.4.1", text: "mx2.mixed.test", tries: 2},
		{domain: "busy.test", code: 421, enh: "4.3.2", text: "too busy", tries: 1},
	}
	for _, tt := range tests {
		t.Run(tt.domain, func(t *testing.T) {
			before := sk.Conns()
			s, err := e.D.Dial(context.Background(), pipeline.MX(), tt.domain)
			if err == nil {
				s.Close()
				t.Fatalf("Dial succeeded to %+v", s.Remote())
			}
			pe := wantPE(t, err, tt.code, tt.enh)
			if !strings.Contains(pe.Message, tt.text) {
				t.Fatalf("message %q does not contain %q", pe.Message, tt.text)
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
	if refusing.Conns() == 0 || busy.Conns() != 1 {
		t.Fatalf("scripted servers saw %d and %d connections", refusing.Conns(), busy.Conns())
	}

	t.Run("permanent greeting then next MX", func(t *testing.T) {
		s := dial(t, e, pipeline.MX(), "fallback.test")
		if s.Remote().Host != "mx2.fallback.test" {
			t.Fatalf("Remote() = %+v", s.Remote())
		}
	})
}

func TestDialCancelled(t *testing.T) {
	// A server that accepts and never greets.
	silent := newScripted(t, "127.0.0.2", 0, func(p *peer) { p.read() })
	e := newEnv(t, silent.Port)
	e.DNS.AddA("silent.test", "127.0.0.2")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := e.D.Dial(ctx, pipeline.MX(), "silent.test")
	wantPE(t, err, 451, "4.4.2")
	if !errors.Is(err, delivery.ErrConnection) {
		t.Fatalf("err %v does not wrap ErrConnection", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Dial took %v despite a 200ms context", d)
	}
}

func TestCommandTimeoutOnGreeting(t *testing.T) {
	silent := newScripted(t, "127.0.0.2", 0, func(p *peer) { p.read() })
	e := newEnv(t, silent.Port)
	e.D.Config.CommandTimeout = 150 * time.Millisecond
	e.DNS.AddA("silent.test", "127.0.0.2")
	_, err := e.D.Dial(context.Background(), pipeline.MX(), "silent.test")
	pe := wantPE(t, err, 451, "4.4.2")
	if !strings.Contains(pe.Message, "timeout during greeting") {
		t.Fatalf("message %q", pe.Message)
	}
}

func TestHELOFallback(t *testing.T) {
	srv := newScripted(t, "127.0.0.2", 0, func(p *peer) {
		p.send("220 old.test SMTP")
		p.expect("EHLO sluice.test")
		p.send("502 5.5.1 what is EHLO")
		p.expect("HELO sluice.test")
		p.send("250 old.test")
		p.expect("MAIL FROM:<a@b.test>") // no SIZE, no BODY: no extensions
		p.send("250 ok")
		p.expect("RCPT TO:<c@d.test>")
		p.send("250 ok")
		p.expect("DATA")
		p.send("354 go")
		p.readData()
		p.send("250 queued")
		p.expect("QUIT")
		p.send("221 bye")
	})
	e := newEnv(t, srv.Port)
	s, err := e.D.Dial(context.Background(), &pipeline.Route{Kind: pipeline.RouteRelay, Host: "127.0.0.2", Port: srv.Port}, "d.test")
	if err != nil {
		t.Fatal(err)
	}
	if s.Pipelining() {
		t.Fatal("pipelining without EHLO")
	}
	per, err := s.Send(context.Background(), "a@b.test", []string{"c@d.test"}, []byte("Subject: x\r\n\r\nhi\r\n"))
	if err != nil || per[0] != nil {
		t.Fatalf("Send = %v, %v", per, err)
	}
	s.Close()
}

func TestRelayRoute(t *testing.T) {
	sk := newSink(t, testutil.SinkOptions{})
	e := newEnv(t, 1) // the MX port must not matter for relays
	e.DNS.AddA("smarthost.test", "127.0.0.2")
	t.Run("by name", func(t *testing.T) {
		s := dial(t, e, &pipeline.Route{Kind: pipeline.RouteRelay, Host: "smarthost.test", Port: sk.Port}, "anything.test")
		if r := s.Remote(); r.Host != "smarthost.test" || r.IP != "127.0.0.2" {
			t.Fatalf("Remote() = %+v", r)
		}
	})
	t.Run("by IP", func(t *testing.T) {
		s := dial(t, e, &pipeline.Route{Kind: pipeline.RouteRelay, Host: "127.0.0.2", Port: sk.Port}, "anything.test")
		if r := s.Remote(); r.Host != "127.0.0.2" || r.IP != "127.0.0.2" {
			t.Fatalf("Remote() = %+v", r)
		}
	})
	t.Run("unknown relay name is temporary", func(t *testing.T) {
		_, err := e.D.Dial(context.Background(), &pipeline.Route{Kind: pipeline.RouteRelay, Host: "nosuch.test", Port: sk.Port}, "x.test")
		wantPE(t, err, 451, "4.4.3")
	})
	t.Run("invalid route is temporary", func(t *testing.T) {
		_, err := e.D.Dial(context.Background(), &pipeline.Route{Kind: "carrier-pigeon"}, "x.test")
		wantPE(t, err, 451, "4.3.5")
	})
}

func TestMaxAddresses(t *testing.T) {
	e := newEnv(t, 1)
	for i := 0; i < 20; i++ {
		e.DNS.AddA("many.test", "127.0.1."+strconv.Itoa(i+1))
	}
	e.D.MaxAddresses = 3
	_, err := e.D.Dial(context.Background(), pipeline.MX(), "many.test")
	var de *delivery.DialError
	if !errors.As(err, &de) || len(de.Attempts) != 3 {
		t.Fatalf("err = %v, want a DialError with 3 attempts", err)
	}
}

func TestSTARTTLS(t *testing.T) {
	crt := testutil.SelfSignedCert(t, "mx.tls.test")
	tlsSink := newSink(t, testutil.SinkOptions{IP: "127.0.0.2", TLS: crt.TLS})
	plain := newSink(t, testutil.SinkOptions{IP: "127.0.0.4", Port: tlsSink.Port})
	e := newEnv(t, tlsSink.Port)
	e.DNS.AddMX("tls.test", 10, "mx.tls.test")
	e.DNS.AddA("mx.tls.test", "127.0.0.2")
	e.DNS.AddMX("plain.test", 10, "mx.plain.test")
	e.DNS.AddA("mx.plain.test", "127.0.0.4")
	e.DNS.AddMX("wrongname.test", 10, "other.wrongname.test")
	e.DNS.AddA("other.wrongname.test", "127.0.0.2")

	send := func(t *testing.T, s *delivery.Session) {
		t.Helper()
		per, err := s.Send(context.Background(), "a@sender.test", []string{"b@x.test"}, message(300))
		if err != nil || per[0] != nil {
			t.Fatalf("Send = %v, %v", per, err)
		}
	}

	t.Run("opportunistic with a self-signed certificate", func(t *testing.T) {
		s := dial(t, e, pipeline.MX(), "tls.test")
		if got := s.Remote().TLS; got != "TLS1.3" {
			t.Fatalf("Remote().TLS = %q, want TLS1.3", got)
		}
		if _, ok := s.Extension("STARTTLS"); ok {
			t.Fatal("extensions not refreshed by EHLO after STARTTLS")
		}
		send(t, s)
	})
	t.Run("opportunistic without STARTTLS", func(t *testing.T) {
		s := dial(t, e, pipeline.MX(), "plain.test")
		if got := s.Remote().TLS; got != "" {
			t.Fatalf("Remote().TLS = %q", got)
		}
		send(t, s)
	})
	t.Run("none never starts TLS", func(t *testing.T) {
		s := dial(t, e, &pipeline.Route{Kind: pipeline.RouteMX, TLS: pipeline.TLSNone}, "tls.test")
		if got := s.Remote().TLS; got != "" {
			t.Fatalf("Remote().TLS = %q", got)
		}
		send(t, s)
	})
	t.Run("required but not offered", func(t *testing.T) {
		_, err := e.D.Dial(context.Background(), &pipeline.Route{Kind: pipeline.RouteMX, TLS: pipeline.TLSRequired}, "plain.test")
		pe := wantPE(t, err, 451, "4.7.10")
		if !strings.Contains(pe.Message, "STARTTLS not offered") {
			t.Fatalf("message %q", pe.Message)
		}
	})
	t.Run("required, unknown authority", func(t *testing.T) {
		_, err := e.D.Dial(context.Background(), &pipeline.Route{Kind: pipeline.RouteMX, TLS: pipeline.TLSRequired}, "tls.test")
		pe := wantPE(t, err, 451, "4.7.5")
		if !strings.Contains(pe.Message, "unknown authority") {
			t.Fatalf("message %q", pe.Message)
		}
	})
	e.D.TLSConfig = &tls.Config{RootCAs: crt.Pool}
	t.Run("required, verified", func(t *testing.T) {
		s := dial(t, e, &pipeline.Route{Kind: pipeline.RouteMX, TLS: pipeline.TLSRequired}, "tls.test")
		if s.Remote().TLS == "" {
			t.Fatal("no TLS")
		}
		send(t, s)
	})
	t.Run("required, wrong host name", func(t *testing.T) {
		_, err := e.D.Dial(context.Background(), &pipeline.Route{Kind: pipeline.RouteMX, TLS: pipeline.TLSRequired}, "wrongname.test")
		pe := wantPE(t, err, 451, "4.7.5")
		if !strings.Contains(pe.Message, "not valid for this host name") {
			t.Fatalf("message %q", pe.Message)
		}
	})
	t.Run("required, skip verify", func(t *testing.T) {
		e.D.Config.TLSSkipVerify = true
		defer func() { e.D.Config.TLSSkipVerify = false }()
		s := dial(t, e, &pipeline.Route{Kind: pipeline.RouteMX, TLS: pipeline.TLSRequired}, "wrongname.test")
		if s.Remote().TLS == "" {
			t.Fatal("no TLS")
		}
	})
	t.Run("default policy from config", func(t *testing.T) {
		e.D.Config.TLS = pipeline.TLSRequired
		defer func() { e.D.Config.TLS = "" }()
		_, err := e.D.Dial(context.Background(), pipeline.MX(), "plain.test")
		wantPE(t, err, 451, "4.7.10")
	})
	if plain.Conns() == 0 {
		t.Fatal("plain sink never used")
	}
}

func TestOpportunisticHandshakeFailureFallsBackToClear(t *testing.T) {
	srv := newScripted(t, "127.0.0.2", 0, func(p *peer) {
		p.ehlo("PIPELINING", "STARTTLS")
		l := p.read()
		switch {
		case l == "STARTTLS":
			p.send("220 2.0.0 go ahead")
			// Read the ClientHello, answer with something that is not TLS.
			buf := make([]byte, 512)
			p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := p.r.Read(buf); err != nil {
				p.t.Errorf("no ClientHello: %v", err)
			}
			p.send("this is not a TLS server hello")
			p.read()
		case strings.HasPrefix(l, "QUIT"):
			p.send("221 bye")
		default:
			p.t.Errorf("unexpected %q", l)
		}
	})
	e := newEnv(t, srv.Port)
	e.DNS.AddA("flaky.test", "127.0.0.2")
	s := dial(t, e, pipeline.MX(), "flaky.test")
	if s.Remote().TLS != "" {
		t.Fatalf("Remote().TLS = %q", s.Remote().TLS)
	}
	if srv.Conns() != 2 {
		t.Fatalf("server saw %d connections, want 2 (TLS, then clear)", srv.Conns())
	}
	// With TLS required the same server fails the attempt.
	_, err := e.D.Dial(context.Background(), &pipeline.Route{Kind: pipeline.RouteMX, TLS: pipeline.TLSRequired}, "flaky.test")
	wantPE(t, err, 451, "4.7.5")
}

func TestSTARTTLSResponseInjection(t *testing.T) {
	// Plain text pipelined after the 220 would be read as if it came
	// over TLS (CVE-2011-0411 style): refuse the connection.
	srv := newScripted(t, "127.0.0.2", 0, func(p *peer) {
		p.ehlo("STARTTLS")
		p.expect("STARTTLS")
		p.send("220 go ahead\r\n250-injected\r\n250 AUTH PLAIN")
		p.read()
	})
	e := newEnv(t, srv.Port)
	e.DNS.AddA("inject.test", "127.0.0.2")
	_, err := e.D.Dial(context.Background(), &pipeline.Route{Kind: pipeline.RouteMX, TLS: pipeline.TLSRequired}, "inject.test")
	if pe := wantPE(t, err, 451, "4.7.5"); !strings.Contains(pe.Message, "sent data before") {
		t.Fatalf("message %q", pe.Message)
	}
}

func TestSTARTTLSRefusedByServer(t *testing.T) {
	srv := newScripted(t, "127.0.0.2", 0, func(p *peer) {
		p.ehlo("STARTTLS")
		p.expect("STARTTLS")
		p.send("454 4.7.0 TLS not available right now")
		if l := p.read(); strings.HasPrefix(l, "QUIT") {
			p.send("221 bye")
		}
	})
	e := newEnv(t, srv.Port)
	e.DNS.AddA("refuse.test", "127.0.0.2")
	s := dial(t, e, pipeline.MX(), "refuse.test")
	if s.Remote().TLS != "" || srv.Conns() != 1 {
		t.Fatalf("TLS %q, %d connections; want clear text on the same connection", s.Remote().TLS, srv.Conns())
	}
	s.Close()
	_, err := e.D.Dial(context.Background(), &pipeline.Route{Kind: pipeline.RouteMX, TLS: pipeline.TLSRequired}, "refuse.test")
	pe := wantPE(t, err, 451, "4.7.10")
	if !strings.Contains(pe.Message, "TLS not available right now") {
		t.Fatalf("message %q", pe.Message)
	}
}

func TestAuthPlain(t *testing.T) {
	sk := newSink(t, testutil.SinkOptions{AuthUser: "relayuser", AuthPass: "s3cret"})
	e := newEnv(t, 1)
	relay := func(user, pass string) *pipeline.Route {
		return &pipeline.Route{Kind: pipeline.RouteRelay, Host: "127.0.0.2", Port: sk.Port, AuthUser: user, AuthPass: pass}
	}
	t.Run("good credentials", func(t *testing.T) {
		s := dial(t, e, relay("relayuser", "s3cret"), "example.test")
		per, err := s.Send(context.Background(), "a@sender.test", []string{"b@example.test"}, message(200))
		if err != nil || per[0] != nil {
			t.Fatalf("Send = %v, %v", per, err)
		}
	})
	t.Run("bad credentials are temporary", func(t *testing.T) {
		_, err := e.D.Dial(context.Background(), relay("relayuser", "wrong"), "example.test")
		pe := wantPE(t, err, 451, "4.7.8")
		if !strings.Contains(pe.Message, "535") {
			t.Fatalf("message %q lacks the server's reply", pe.Message)
		}
	})
	t.Run("no credentials: the relay refuses MAIL", func(t *testing.T) {
		s := dial(t, e, relay("", ""), "example.test")
		per, err := s.Send(context.Background(), "a@sender.test", []string{"b@example.test"}, message(200))
		if err != nil {
			t.Fatal(err)
		}
		wantPE(t, per[0], 502, "5.7.0")
	})
	t.Run("never in clear text to a remote host", func(t *testing.T) {
		d := *e.D
		// 192.0.2.1 (TEST-NET) is redirected to the sink: not loopback,
		// so credentials must not go out without TLS.
		d.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			var nd net.Dialer
			return nd.DialContext(ctx, network, sk.Addr)
		}
		r := relay("relayuser", "s3cret")
		r.Host = "192.0.2.1"
		_, err := d.Dial(context.Background(), r, "example.test")
		pe := wantPE(t, err, 451, "4.7.10")
		if !strings.Contains(pe.Message, "unencrypted") {
			t.Fatalf("message %q", pe.Message)
		}
	})
	if len(sk.Messages()) != 1 {
		t.Fatalf("sink got %d messages, want 1", len(sk.Messages()))
	}
}

func TestAuthOverTLSToRemoteHost(t *testing.T) {
	crt := testutil.SelfSignedCert(t, "smarthost.test")
	sk := newSink(t, testutil.SinkOptions{TLS: crt.TLS, AuthUser: "u", AuthPass: "p"})
	e := newEnv(t, 1)
	e.D.TLSConfig = &tls.Config{RootCAs: crt.Pool}
	e.D.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		var nd net.Dialer
		return nd.DialContext(ctx, network, sk.Addr)
	}
	e.DNS.AddA("smarthost.test", "192.0.2.1")
	s := dial(t, e, &pipeline.Route{Kind: pipeline.RouteRelay, Host: "smarthost.test", Port: 587, TLS: pipeline.TLSRequired, AuthUser: "u", AuthPass: "p"}, "x.test")
	if s.Remote().TLS == "" || s.Remote().IP != "192.0.2.1" {
		t.Fatalf("Remote() = %+v", s.Remote())
	}
	per, err := s.Send(context.Background(), "a@sender.test", []string{"b@x.test"}, message(200))
	if err != nil || per[0] != nil {
		t.Fatalf("Send = %v, %v", per, err)
	}
}
