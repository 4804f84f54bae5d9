package delivery_test

import (
	"context"
	"net/netip"
	"strconv"
	"testing"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// Issue 13 item 2: an MX host that is this node is never used, nor any
// host not preferred over it; when this node is the best MX the mail
// bounces with 554 5.4.6 at once.
func TestMXLoops(t *testing.T) {
	sk := newSink(t, testutil.SinkOptions{}) // on 127.0.0.2, not this node
	e := newEnv(t, sk.Port)
	e.D.Self = &delivery.Self{
		Names:    []string{"relay.self.test"},
		Prefixes: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")},
		Listen: []netip.AddrPort{
			netip.MustParseAddrPort("127.0.0.3:" + itoa(sk.Port)),   // this node
			netip.MustParseAddrPort("127.0.0.2:" + itoa(sk.Port+1)), // this node, but another port
		},
	}
	d := e.DNS
	d.AddA("relay.self.test", "127.0.0.3")
	d.AddA("sink.other.test", "127.0.0.2")
	d.AddA("self-by-addr.test", "127.0.0.3") // a name that is not ours, with our address
	d.AddA("nat.test", "198.51.100.7")
	d.AddA("down.other.test", "127.0.0.9")

	d.AddMX("best.test", 10, "self-by-addr.test")
	d.AddMX("best.test", 20, "sink.other.test")
	d.AddMX("only.test", 10, "relay.self.test")
	d.AddMX("equal.test", 10, "sink.other.test")
	d.AddMX("equal.test", 10, "relay.self.test")
	d.AddMX("nat-best.test", 5, "nat.test")
	d.AddMX("nat-best.test", 50, "sink.other.test")
	d.AddA("implicit.test", "127.0.0.3")
	d.AddMX("backup.test", 10, "sink.other.test")
	d.AddMX("backup.test", 20, "relay.self.test")
	d.AddMX("backup-down.test", 10, "down.other.test")
	d.AddMX("backup-down.test", 20, "relay.self.test")
	d.AddMX("backup-down.test", 30, "sink.other.test")

	for _, domain := range []string{"best.test", "only.test", "equal.test", "nat-best.test", "implicit.test", "[127.0.0.3]"} {
		t.Run(domain, func(t *testing.T) {
			before := sk.Conns()
			s, err := e.D.Dial(context.Background(), pipeline.MX(), domain)
			if err == nil {
				s.Close()
			}
			pe := wantPE(t, err, 554, "5.4.6")
			if want := "mail for " + domain + " loops back to myself"; pe.Message != want {
				t.Errorf("message %q, want %q", pe.Message, want)
			}
			if sk.Conns() != before {
				t.Error("a host less preferred than this node was used")
			}
		})
	}
	t.Run("backup.test", func(t *testing.T) {
		// This node is a backup MX: the better one is used.
		s, err := e.D.Dial(context.Background(), pipeline.MX(), "backup.test")
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if s.Remote().Host != "sink.other.test" {
			t.Fatalf("remote %+v", s.Remote())
		}
	})
	t.Run("backup-down.test", func(t *testing.T) {
		// The better MX is down: defer, never fall through to a worse one.
		before := sk.Conns()
		_, err := e.D.Dial(context.Background(), pipeline.MX(), "backup-down.test")
		wantPE(t, err, 451, "4.4.1")
		if sk.Conns() != before {
			t.Error("an MX host less preferred than this node was used")
		}
	})
	t.Run("relay route is not checked", func(t *testing.T) {
		// With the sink's own address counted as this node, MX delivery
		// to it loops, but a relay route to it (a content filter on this
		// machine, say) is taken as configured.
		e.D.Self = &delivery.Self{Listen: []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr(sk.IP), uint16(sk.Port))}}
		_, err := e.D.Dial(context.Background(), pipeline.MX(), "backup.test")
		wantPE(t, err, 554, "5.4.6")
		s, err := e.D.Dial(context.Background(), &pipeline.Route{Kind: pipeline.RouteRelay, Host: sk.IP, Port: sk.Port}, "x.test")
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	})
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestNewSelf(t *testing.T) {
	cfg := config.Defaults()
	cfg.Hostname = "Node.Example.test."
	cfg.Delivery.Hostname = "out.example.test"
	cfg.Delivery.OwnNames = []string{"mx.example.test"}
	cfg.Delivery.OwnAddresses = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/28")}
	cfg.SMTP = []config.SMTPListener{
		{Addr: "0.0.0.0:2525", Hostname: "in.example.test"},
		{Addr: "127.0.0.5:25"},
		{Addr: "localhost:587"},
	}
	s := delivery.NewSelf(cfg)
	for _, n := range []string{"node.example.test", "OUT.example.test.", "mx.example.test", "in.example.test"} {
		if !s.IsName(n) {
			t.Errorf("IsName(%q) = false", n)
		}
	}
	if s.IsName("other.example.test") {
		t.Error("IsName(other) = true")
	}
	for _, c := range []struct {
		ip   string
		port int
		want bool
	}{
		{"127.0.0.1", 2525, true}, // wildcard listener: loopback is an interface address
		{"127.0.0.5", 2525, true}, // ... and so is the whole loopback range
		{"::1", 2525, true},
		{"127.0.0.1", 25, false},
		{"127.0.0.5", 25, true},
		{"127.0.0.6", 25, false},
		{"127.0.0.1", 587, true},
		{"::1", 587, true},
		{"203.0.113.9", 25, true}, // own_addresses, any port
		{"203.0.113.99", 25, false},
		{"0.0.0.0", 25, true},
		{"192.0.2.1", 2525, false},
	} {
		if got := s.IsAddr(netip.MustParseAddr(c.ip), c.port); got != c.want {
			t.Errorf("IsAddr(%s, %d) = %v, want %v", c.ip, c.port, got, c.want)
		}
	}
	var none *delivery.Self
	if none.IsName("x") || none.IsAddr(netip.MustParseAddr("127.0.0.1"), 25) {
		t.Error("a nil Self matched")
	}
}
