package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestShapingHeldMessagesSurviveKill9: messages held by a site's rate
// (1 per hour: the first leaves, the others wait in the queue) are in the
// spool. After kill -9 and a restart with the rate lifted, every one of
// them is delivered. A domain without MX records (A only) is a site of its
// own and is delivered to its address.
func TestShapingHeldMessagesSurviveKill9(t *testing.T) {
	dns := dnstest.NewServer(t)
	dns.AddMX("held.test", 10, "mx.held.test")
	dns.AddA("mx.held.test", "127.0.0.4")
	dns.AddA("nomx.test", "127.0.0.4")
	sk, _ := sinkPair(t, testutil.SinkOptions{})
	r := startShapingRelay(t, dns, sk.Port, "[\"default\"]\nmax_message_rate = \"1/h\"\n", "")
	sendN(t, r, 5, func(i int) string { return fmt.Sprintf("u%d@held.test", i) })
	sendN(t, r, 1, func(int) string { return "x@nomx.test" })
	waitFor(t, "the first held.test message and the nomx.test one", func() bool { return len(sk.Messages()) >= 2 })
	waitFor(t, "a delivery held by the rate", func() bool {
		return countType(r.readEvents(), pipeline.EventDelivered, "") >= 2 && strings.Contains(r.logText(), "delivery held by shaping")
	})
	if n := len(sk.Messages()); n != 2 {
		t.Fatalf("%d messages at the sink before the restart; the rate allows one to held.test (and one to nomx.test)", n)
	}
	r.kill9()
	if err := os.WriteFile(filepath.Join(r.dir, "shaping.toml"), []byte("[\"default\"]\nconnection_limit = 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r.start()
	waitFor(t, "all six messages at the sink", func() bool { return len(sk.Messages()) >= 6 })
	seen := map[string]int{}
	for _, m := range sk.Messages() {
		seen[m.Rcpts[0]]++
	}
	for i := 0; i < 5; i++ {
		if a := fmt.Sprintf("u%d@held.test", i); seen[a] != 1 {
			t.Errorf("%s delivered %d times", a, seen[a])
		}
	}
	if seen["x@nomx.test"] != 1 {
		t.Errorf("x@nomx.test delivered %d times", seen["x@nomx.test"])
	}
}
