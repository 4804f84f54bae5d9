package queue

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/internal/shaping"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestSiteLookupsBounded: 1,000 messages, each to a new domain whose MX
// lookup hangs, start at most maxSiteLookups goroutines (before the
// bound: one per message). Once DNS answers, every message is delivered.
func TestSiteLookupsBounded(t *testing.T) {
	const n = 1000
	dns := dnstest.NewServer(t)
	for i := 0; i < n; i++ {
		dns.SetTimeout(fmt.Sprintf("d%d.test", i))
	}
	res, err := dnsx.New(dnsx.Options{Server: dns.Addr(), Timeout: time.Second, Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	rules, err := shaping.Parse("t.toml", []byte("[\"default\"]\nconnection_limit = 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	sh, err := shaping.New(shaping.Options{Rules: rules, Resolver: res, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sh.Stop)
	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	f := &fakeDialer{}
	q := New(sp, f, Options{MaxPerDestination: 1, MaxMessagesPerConn: 100, IdleTimeout: time.Second,
		Logger: slog.New(slog.DiscardHandler), Shaper: sh})
	q.Start()
	type msg struct {
		m  *spool.Meta
		rs []*spool.Recipient
	}
	msgs := make([]msg, n)
	batch := sp.NewBatch()
	for i := range msgs {
		d := fmt.Sprintf("d%d.test", i)
		m := &spool.Meta{ID: sp.NewID(), Sender: "s@a.test", Source: "smtp", Received: time.Now(), Size: 4}
		_ = batch.PutMessage(m, []byte("data"))
		r := &spool.Recipient{MsgID: m.ID, Address: "r@" + d, Domain: d, Route: pipeline.MX()}
		_ = batch.PutRecipient(r)
		msgs[i] = msg{m, []*spool.Recipient{r}}
	}
	if err := batch.Commit(false); err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	for _, x := range msgs {
		q.Enqueue(x.m, x.rs)
	}
	if got := runtime.NumGoroutine() - before; got > 3*maxSiteLookups { // room for the resolver's and timers' goroutines; unbounded would be about n
		t.Errorf("%d more goroutines for %d messages waiting for DNS; want at most %d", got, n, maxSiteLookups)
	}
	for i := 0; i < n; i++ { // DNS answers now (NXDOMAIN): each domain is its own site
		dns.Remove(fmt.Sprintf("d%d.test", i))
	}
	testutil.WaitForWithin(t, 3*time.Minute, "every message delivered", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.sent) == n
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q.Stop(ctx)
}
