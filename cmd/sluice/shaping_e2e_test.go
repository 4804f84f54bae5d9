package main

// End-to-end tests of outbound shaping (issue 18 items 2-4): site limits
// shared by domains with the same MX hosts, adaptive suspension on "slow
// down" replies, and egress pools leaving from their own addresses. The
// real binary delivers to testutil sinks on loopback addresses, with MX
// records from a miekg/dns server on loopback.

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

const shapingConfig = `
local sluice = require("sluice")
sluice.node { name = "shape-1", hostname = "relay.shape.test" }
sluice.spool { path = "{{SPOOL}}" }
sluice.events { file = "{{EVENTS}}" }
sluice.listen_smtp { addr = "{{SMTP}}", relay_networks = { "127.0.0.1/32" } }
sluice.delivery {
  resolver = "{{DNS}}",
  port = {{MXPORT}},
  tls = "none",
  retry = { initial = "200ms", max = "500ms", jitter = 0 },
  idle_timeout = "2s",
}
sluice.shaping { files = { "shaping.toml" } }
{{EXTRA}}
`

// startShapingRelay writes the config and shaping file and starts the
// binary.
func startShapingRelay(t *testing.T, dns *dnstest.Server, mxPort int, toml, extra string) *relayProc {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "shaping.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := strings.NewReplacer("{{DNS}}", dns.Addr(), "{{MXPORT}}", itoa(mxPort), "{{EXTRA}}", extra).Replace(shapingConfig)
	r := newRelay(t, dir, cfg)
	r.start()
	return r
}

// sinkPair starts sinks on 127.0.0.4 and 127.0.0.5 at one port (MX
// delivery has one port for every host).
func sinkPair(t *testing.T, o testutil.SinkOptions) (*testutil.Sink, *testutil.Sink) {
	o.IP = "127.0.0.4"
	a := testutil.StartSink(t, o)
	o.IP, o.Port = "127.0.0.5", a.Port
	return a, testutil.StartSink(t, o)
}

func sendN(t *testing.T, r *relayProc, n int, rcpt func(i int) string) {
	t.Helper()
	for i := 0; i < n; i++ {
		msg := fmt.Sprintf("Subject: shaping %d\r\n\r\nbody %d\r\n", i, i)
		if err := sendMail(r.smtp, "app@sender.test", []string{rcpt(i)}, msg); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
}

// maxInWindow is the most arrivals in any window of length w.
func maxInWindow(times []time.Time, w time.Duration) int {
	at := slices.Clone(times)
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	best := 0
	for i := range at {
		j := i
		for j < len(at) && at[j].Sub(at[i]) < w {
			j++
		}
		best = max(best, j-i)
	}
	return best
}

// TestShapingSiteLimits: a.test and b.test have the same MX host, so they
// are one site, and the rule written for a.test holds for both together:
// at most 2 connections at once (the sink counts them), at most 10
// messages per second (the sink notes when each MAIL arrives), 5 messages
// per connection. The sink takes 300 ms per transaction, so keeping up
// with the submissions needs more than 2 connections; the control runs
// (10 connections; then without the rate) show that the sink does see
// more when the limits are lifted, so the assertions can fail.
func TestShapingSiteLimits(t *testing.T) {
	const n = 40
	for _, tc := range []struct {
		name  string
		limit int
		rate  string
	}{{"limited", 2, `"10/s"`}, {"more-connections", 10, `"10/s"`}, {"no-rate", 10, ""}} {
		t.Run(tc.name, func(t *testing.T) {
			dns := dnstest.NewServer(t)
			dns.AddMX("a.test", 10, "mx.shared.test")
			dns.AddMX("b.test", 10, "mx.shared.test")
			dns.AddA("mx.shared.test", "127.0.0.4")
			sk, _ := sinkPair(t, testutil.SinkOptions{})
			var mu sync.Mutex
			var mails []time.Time
			sk.OnMail = func(string) error {
				mu.Lock()
				mails = append(mails, time.Now())
				mu.Unlock()
				return nil
			}
			sk.OnRcpt = func(string) error { time.Sleep(300 * time.Millisecond); return nil }
			toml := fmt.Sprintf("[\"a.test\"]\nconnection_limit = %d\nmax_deliveries_per_connection = 5\n", tc.limit)
			if tc.rate != "" {
				toml += "max_message_rate = " + tc.rate + "\n"
			}
			r := startShapingRelay(t, dns, sk.Port, toml, "")
			sendN(t, r, n, func(i int) string { return fmt.Sprintf("u%d@%s", i, []string{"a.test", "b.test"}[i%2]) })
			waitFor(t, "every message at the sink", func() bool { return len(sk.Messages()) >= n })
			mu.Lock()
			window := maxInWindow(mails, time.Second)
			mu.Unlock()
			peak := sk.PeakConns()
			t.Logf("limit %d rate %s: peak %d connections, %d connections in all, at most %d MAIL commands in one second",
				tc.limit, tc.rate, peak, sk.Conns(), window)
			switch {
			case tc.limit == 2 && peak > 2:
				t.Errorf("the sink saw %d connections at once; the site allows 2", peak)
			case tc.limit > 2 && peak <= 2:
				t.Errorf("control: peak %d connections; the test cannot tell a limit of 2 from none", peak)
			}
			// The relay spaces sends 100 ms apart: a window of one
			// second holds 10 of them, 11 when the first and the last
			// fall on its edges. The sink sees each MAIL a little later
			// than the relay let it go; on a loaded machine one can be
			// 100 ms later than the next one, so one more is allowed.
			// Without a rate the sink sees 35-40 in a second.
			switch {
			case tc.rate != "" && window > 12:
				t.Errorf("the sink got %d transactions within one second; the site allows 10/s", window)
			case tc.rate == "" && window <= 12:
				t.Errorf("control: at most %d transactions in a second without a rate; the test cannot tell 10/s from none", window)
			}
			if sk.Conns() < n/5 {
				t.Errorf("%d connections for %d messages at 5 per connection", sk.Conns(), n)
			}
			evs := r.waitEvents("every delivered event", func(evs []pipeline.Event) bool {
				return countType(evs, pipeline.EventDelivered, "") >= n
			})
			for _, d := range []string{"a.test", "b.test"} {
				got := 0
				for _, e := range evs {
					if e.Type == pipeline.EventDelivered && e.Queue == d {
						got++
					}
				}
				if got != n/2 {
					t.Errorf("%d delivered events with queue %s, want %d", got, d, n/2)
				}
			}
		})
	}
}

// TestShapingAdaptive: after 20 messages the sink of site 1 answers
// "421 4.7.0 Try again later"; the rule suspends site 1 for 10 s. While it
// is suspended the sink sees no attempt, and site 2 delivers at once;
// after the suspension site 1 gets the rest.
func TestShapingAdaptive(t *testing.T) {
	dns := dnstest.NewServer(t)
	dns.AddMX("s1.test", 10, "mx1.test")
	dns.AddA("mx1.test", "127.0.0.4")
	dns.AddMX("s2.test", 10, "mx2.test")
	dns.AddA("mx2.test", "127.0.0.5")
	sk1, sk2 := sinkPair(t, testutil.SinkOptions{})
	var mails, accepted atomic.Int32
	var refuse atomic.Bool
	refuse.Store(true)
	sk1.OnMail = func(string) error {
		mails.Add(1)
		if refuse.Load() && accepted.Load() >= 20 {
			return &gosmtp.SMTPError{Code: 421, EnhancedCode: gosmtp.EnhancedCode{4, 7, 0}, Message: "Try again later"}
		}
		accepted.Add(1)
		return nil
	}
	toml := `
["default"]
connection_limit = 2

[["default".automation]]
regex = '''^421 4\.7\.0 Try again later'''
action = "Suspend"
duration = "10s"
`
	r := startShapingRelay(t, dns, sk1.Port, toml, "")
	sendN(t, r, 30, func(i int) string { return fmt.Sprintf("u%d@s1.test", i) })
	evs := r.waitEvents("site 1 suspended", func(evs []pipeline.Event) bool {
		return countType(evs, pipeline.EventShapingSuspended, "") > 0
	})
	// The sink may still be answering a transaction that started before
	// the suspension; let it finish, then no attempt may follow.
	waitFor(t, "site 1 connections closed", func() bool { return sk1.OpenConns() == 0 })
	refuse.Store(false)
	atSuspend := mails.Load()
	var susp pipeline.Event
	for _, e := range evs {
		if e.Type == pipeline.EventShapingSuspended {
			susp = e
		}
	}
	if susp.Queue != "mx1.test" || susp.Metadata["site"] != "mx1.test" || susp.Metadata["action"] != "Suspend" ||
		susp.Response == nil || susp.Response.Code != 421 || susp.Metadata["until"] == "" {
		t.Errorf("suspended event %+v", susp)
	}
	sendN(t, r, 5, func(i int) string { return fmt.Sprintf("v%d@s2.test", i) })
	waitFor(t, "site 2 delivered", func() bool { return len(sk2.Messages()) >= 5 })
	evs = r.readEvents()
	if countType(evs, pipeline.EventShapingResumed, "") != 0 {
		t.Fatalf("site 1 resumed before site 2 delivered 5 messages; the test needs a longer suspension:\n%s", describeEvents(evs))
	}
	if got := mails.Load(); got != atSuspend {
		t.Errorf("site 1's sink saw %d MAIL commands while suspended", got-atSuspend)
	}
	r.waitEvents("site 1 resumed", func(evs []pipeline.Event) bool {
		return countType(evs, pipeline.EventShapingResumed, "") > 0
	})
	waitFor(t, "site 1 delivered everything", func() bool { return len(sk1.Messages()) >= 30 })
	evs = r.readEvents()
	deferred := 0
	for _, e := range evs {
		if e.Type == pipeline.EventDeferred && e.Queue == "s1.test" && e.Response != nil && e.Response.Code == 421 {
			deferred++
		}
		if strings.HasPrefix(e.Type, "shaping_") && e.Queue != "mx1.test" {
			t.Errorf("shaping event for another site: %+v", e)
		}
	}
	if deferred == 0 {
		t.Errorf("no deferred event with the 421:\n%s", describeEvents(evs))
	}
	if n := countType(evs, pipeline.EventShapingSuspended, ""); n != 1 {
		t.Errorf("%d suspended events, want 1", n)
	}
}

// TestEgressPools: the route picks pool A for pa.test and pool B for
// pb.test; the sink sees A's messages from 127.0.0.2 and B's from
// 127.0.0.3, each with its source's EHLO name.
func TestEgressPools(t *testing.T) {
	dns := dnstest.NewServer(t)
	dns.AddMX("pa.test", 10, "mx.pool.test")
	dns.AddMX("pb.test", 10, "mx.pool.test")
	dns.AddA("mx.pool.test", "127.0.0.4")
	sk, _ := sinkPair(t, testutil.SinkOptions{})
	extra := `
sluice.egress {
  sources = {
    { name = "ip2", address = "127.0.0.2", helo = "mta2.shape.test" },
    { name = "ip3", address = "127.0.0.3", helo = "mta3.shape.test" },
  },
  pools = {
    { name = "A", sources = { "ip2" } },
    { name = "B", sources = { "ip3" } },
  },
}
sluice.stage("pools", {
  on_route = function(msg, rcpt)
    if rcpt.domain == "pa.test" then return sluice.route.mx { pool = "A" } end
    return sluice.route.mx { pool = "B" }
  end,
})
`
	r := startShapingRelay(t, dns, sk.Port, "", extra)
	sendN(t, r, 6, func(i int) string { return fmt.Sprintf("u%d@%s", i, []string{"pa.test", "pb.test"}[i%2]) })
	waitFor(t, "six messages at the sink", func() bool { return len(sk.Messages()) >= 6 })
	for _, m := range sk.Messages() {
		want, helo := "127.0.0.3", "mta3.shape.test"
		if strings.HasSuffix(m.Rcpts[0], "@pa.test") {
			want, helo = "127.0.0.2", "mta2.shape.test"
		}
		if m.ClientIP != want || m.HELO != helo {
			t.Errorf("%s came from %s (EHLO %s), want %s (%s)", m.Rcpts[0], m.ClientIP, m.HELO, want, helo)
		}
	}
}
