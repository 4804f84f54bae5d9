package main

import (
	"fmt"
	"testing"

	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/internal/testutil"
)

// twoSourcePool is a sluice.egress block: sources ip2 (127.0.0.2) and
// ip3 (127.0.0.3) in the default pool "all", in that order.
const twoSourcePool = `
sluice.egress {
  sources = {
    { name = "ip2", address = "127.0.0.2", helo = "mta2.shape.test" },
    { name = "ip3", address = "127.0.0.3", helo = "mta3.shape.test" },
  },
  pools = { { name = "all", sources = { "ip2", "ip3" } } },
  default_pool = "all",
}
`

// oneMXSite starts a DNS server where domain's one MX host, mx.DOMAIN,
// is 127.0.0.4 (the first sink of sinkPair).
func oneMXSite(t *testing.T, domain string) *dnstest.Server {
	t.Helper()
	dns := dnstest.NewServer(t)
	dns.AddMX(domain, 10, "mx."+domain)
	dns.AddA("mx."+domain, "127.0.0.4")
	return dns
}

// TestShapingSourceRateLeavesPoolFree: 127.0.0.2's rate to the site is
// 1 per hour; 127.0.0.3 has none. After 127.0.0.2's one message the
// other nine leave from 127.0.0.3 at once, instead of waiting in the
// queue for 127.0.0.2's next turn. Before the fix (finding 4 of the
// newcomer review) Acquire did not look at rates and the worker whose
// lease's rate was used up held every message of the pool for an hour.
func TestShapingSourceRateLeavesPoolFree(t *testing.T) {
	dns := oneMXSite(t, "rt.test")
	sk, _ := sinkPair(t, testutil.SinkOptions{})
	toml := "[\"default\"]\nconnection_limit = 1\n[\"default\".sources.\"ip2\"]\nmax_message_rate = \"1/h\"\n"
	r := startShapingRelay(t, dns, sk.Port, toml, twoSourcePool)
	sendN(t, r, 10, func(i int) string { return fmt.Sprintf("u%d@rt.test", i) })
	waitFor(t, "ten messages at the sink", func() bool { return len(sk.Messages()) >= 10 })
	from := map[string]int{}
	for _, m := range sk.Messages() {
		from[m.ClientIP]++
	}
	// ip2 has its one turn of the hour (the first lease of the pool goes
	// to it, and its rate lets the first message go); the rest is ip3's.
	if from["127.0.0.2"] != 1 || from["127.0.0.3"] != 9 || len(from) != 2 {
		t.Errorf("messages per source address %v, want 127.0.0.2:1 127.0.0.3:9", from)
	}
}
