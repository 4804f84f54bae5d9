package ratelimit_test

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	tu "github.com/sluice-mta/sluice/internal/testutil"
)

// TestClusterLeases: two nodes on one redis-server with a fast limit
// (1000/second per sender domain: leases of 32 by default) accept 20
// messages, alternating, in far fewer script runs than messages, and
// each counts what it leased in sluice_ratelimit_lease_events_total.
func TestClusterLeases(t *testing.T) {
	rs := tu.StartRedis(t)
	stage := `sluice.stage("limits", sluice.builtin.ratelimit { store = "redis", limits = { { key = "sender_domain", rate = "1000/second" } } })`
	a := startNode(t, stage, rs.Addr, nil)
	b := startNode(t, stage, rs.Addr, a.sink)
	nodes := []*node{a, b}
	c := redis.NewClient(&redis.Options{Addr: rs.Addr, Protocol: 2, DisableIdentity: true})
	defer c.Close()
	for i := 0; i < 20; i++ {
		if _, err := send(t, nodes[i%2].smtp, "a@origin.example", "b@dest.example"); err != nil {
			t.Fatalf("message %d (node %d): %v", i+1, i%2, err)
		}
	}
	tu.WaitFor(t, "20 messages at the sink", func() bool { return len(a.sink.Messages()) == 20 })
	runs := scriptRuns(t, c)
	t.Logf("20 messages on 2 nodes: %d script runs", runs)
	// Each node leases 32 with its first message and spends them on its
	// next 9 (1 s apart at most; a stalled machine may take a few more).
	if runs >= 20 {
		t.Errorf("%d script runs for 20 messages: the leases were not used", runs)
	}
	for i, n := range nodes {
		if got := counter(t, n.srv, "sluice_ratelimit_lease_events_total", "leased"); got < 31 {
			t.Errorf("node %d leased %v events beyond its checks, want at least 31", i, got)
		}
	}
}

// scriptRuns is the number of EVALSHA and EVAL the server ran.
func scriptRuns(t *testing.T, c *redis.Client) int {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
		if ok && (name == "cmdstat_evalsha" || name == "cmdstat_eval") {
			v, _, _ := strings.Cut(rest, ",")
			k, _ := strconv.Atoi(v)
			n += k
		}
	}
	return n
}
