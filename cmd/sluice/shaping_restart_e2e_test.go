package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	gosmtp "github.com/emersion/go-smtp"
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

// TestShapingBlocklistSuspendsOneSource: the pool has two egress sources;
// the site answers "451 4.7.1 ... blocklisted" to every transaction from
// 127.0.0.2. The Suspend rule stops that source for the site only: the
// sink sees one refused transaction from 127.0.0.2, and every message,
// including the deferred one, is delivered from 127.0.0.3. Before the fix
// found by the newcomer review, the worker whose source was suspended
// held every message of the pool for the suspension (1 hour) although
// 127.0.0.3 was free.
func TestShapingBlocklistSuspendsOneSource(t *testing.T) {
	dns := oneMXSite(t, "bl.test")
	sk, _ := sinkPair(t, testutil.SinkOptions{})
	var refused, accepted, other atomic.Int32
	sk.OnData = func(c *gosmtp.Conn, rd io.Reader) error {
		_, _ = io.Copy(io.Discard, rd)
		switch ip, _, _ := strings.Cut(c.Conn().RemoteAddr().String(), ":"); ip {
		case "127.0.0.2":
			refused.Add(1)
			return &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 7, 1}, Message: "Your IP 127.0.0.2 is blocklisted"}
		case "127.0.0.3":
			accepted.Add(1)
		default:
			other.Add(1)
		}
		return nil
	}
	toml := `
["default"]
connection_limit = 1
[["default".automation]]
regex = '''(?i)blocklisted'''
action = "Suspend"
duration = "1h"
`
	r := startShapingRelay(t, dns, sk.Port, toml, twoSourcePool)
	sendN(t, r, 10, func(i int) string { return fmt.Sprintf("u%d@bl.test", i) })
	evs := r.waitEvents("ten delivered events", func(evs []pipeline.Event) bool {
		return countType(evs, pipeline.EventDelivered, "") >= 10
	})
	if a, o := accepted.Load(), other.Load(); a != 10 || o != 0 {
		t.Errorf("%d transactions accepted from 127.0.0.3 and %d from elsewhere, want 10 and 0", a, o)
	}
	if n := refused.Load(); n != 1 {
		t.Errorf("%d transactions from 127.0.0.2; the first refusal suspends it", n)
	}
	var susp []pipeline.Event
	for _, e := range evs {
		if e.Type == pipeline.EventShapingSuspended {
			susp = append(susp, e)
		}
	}
	if len(susp) != 1 || susp[0].Metadata["egress_source"] != "ip2" || susp[0].Metadata["action"] != "Suspend" {
		t.Errorf("suspended events %+v, want one for ip2", susp)
	}
}
