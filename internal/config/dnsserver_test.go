package config

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestDNSServerConfig(t *testing.T) {
	cfg, err := Parse("pipeline.lua", []byte(`
sluice.dns_server { listen = "127.0.0.1:5353", zone = "DKIM.Relay.Example.", ns = { "ns1.relay.example." }, hostmaster = "ops@relay.example", ttl = "1m", selectors = { "A1", "b2" } }
sluice.dkim_rotation { every = "0", overlap = "1h", check_resolvers = { "8.8.8.8", "[2001:4860:4860::8888]:53" } }`))
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.DNSServer
	if d.Zone != "dkim.relay.example" || d.NS[0] != "ns1.relay.example" || d.Hostmaster != "ops.relay.example" || d.TTL != time.Minute ||
		!slices.Equal(d.Selectors, []string{"a1", "b2"}) {
		t.Errorf("dns_server %+v", d)
	}
	r := cfg.DKIMRotation
	if r.Every != 0 || r.Overlap != time.Hour || r.RemoveAfter != 7*24*time.Hour || r.CheckEvery != time.Minute ||
		!slices.Equal(r.CheckResolvers, []string{"8.8.8.8:53", "[2001:4860:4860::8888]:53"}) {
		t.Errorf("dkim_rotation %+v", r)
	}
	if cfg, _ := Parse("pipeline.lua", nil); cfg.DNSServer != nil || cfg.DKIMRotation.Every != 90*24*time.Hour {
		t.Errorf("defaults: %+v %+v", cfg.DNSServer, cfg.DKIMRotation)
	}
	for _, c := range []struct{ src, want string }{
		{`sluice.dkim_rotation { every = "1d" }`, "sluice.dkim_rotation: needs sluice.dns_server"},
		{`sluice.dns_server { listen = ":53", ns = { "ns1.x.example" } }`, `key "zone": is required`},
		{`sluice.dns_server { listen = ":53", zone = "dkim", ns = { "ns1.x.example" } }`, `"dkim" is not a DNS name of at least two labels`},
		{`sluice.dns_server { listen = ":53", zone = "dkim.x.example" }`, `key "ns": is required`},
		{`sluice.dns_server { listen = ":53", zone = "dkim.x.example", ns = { "ns1.dkim.x.example" } }`, `is inside the zone`},
		{`sluice.dns_server { listen = ":53", zone = "dkim.x.example", ns = { "ns1.x.example" }, selectors = { "s1" } }`, `needs at least two selectors`},
		{`sluice.dns_server { listen = ":53", zone = "dkim.x.example", ns = { "ns1.x.example" }, selectors = { "s1", "s_2" } }`, `"s_2" is not a DNS label`},
		{`sluice.dns_server { listen = ":53", zone = "dkim.x.example", ns = { "ns1.x.example" }, selectors = { "s1", "S1" } }`, `"s1" is given twice`},
		{`sluice.dns_server { listen = ":53", zone = "dkim.x.example", ns = { "ns1.x.example" }, ttl = "10d" }`, `key "ttl": must be from 1s to 7d`},
		{`sluice.listen_smtp { addr = "127.0.0.1:53" }
sluice.dns_server { listen = "127.0.0.1:53", zone = "dkim.x.example", ns = { "ns1.x.example" } }`, `is already used by the listener`},
		{`sluice.dns_server { listen = ":53", zone = "dkim.x.example", ns = { "ns1.x.example" } }
sluice.dkim_rotation { overlap = "0" }`, `key "overlap": must be longer than zero`},
		{`sluice.dns_server { listen = ":53", zone = "dkim.x.example", ns = { "ns1.x.example" } }
sluice.dkim_rotation { check_resolvers = { "a b" } }`, `"a b" is not host:port`},
	} {
		_, err := Parse("pipeline.lua", []byte(c.src))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s:\n got %v\nwant %q", c.src, err, c.want)
		}
	}
}
