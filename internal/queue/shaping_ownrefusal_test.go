package queue

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/dnsx/dnstest"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// policyDialer dials dane-or-mta-sts routes with a real delivery.Dialer
// (which refuses a TLS-Required: No message before connecting) and the
// others with the fake.
type policyDialer struct {
	*fakeDialer
	real *delivery.Dialer
}

func (p *policyDialer) DialFrom(ctx context.Context, r *pipeline.Route, domain string, eg delivery.Egress) (Conn, error) {
	if r.TLS == pipeline.TLSDANEOrMTASTS {
		s, err := p.real.DialFrom(ctx, r, domain, eg)
		if err != nil {
			return nil, err
		}
		s.Close()
		return nil, &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 0, 0}, Message: "unexpected session"}
	}
	return p.fakeDialer.Dial(ctx, r, domain)
}

// TestOwnRefusalDoesNotTriggerShaping: the 550 5.7.1 with which a
// dane-or-mta-sts route refuses a TLS-Required: No message is about that
// message, not the site: a shaping rule for a site's "550 5.7.1" reply
// (a blocklisting) must not suspend the site for the mail behind it.
func TestOwnRefusalDoesNotTriggerShaping(t *testing.T) {
	sh := newShaper(t, "[[\"default\".automation]]\nregex = '''^5\\d\\d 5\\.7\\.1 '''\naction = \"SuspendSite\"\nduration = \"1h\"\n")
	dns := dnstest.NewServer(t)
	dns.AddMX("b.test", 10, "mx.b.test")
	dns.AddA("mx.b.test", "127.0.0.1")
	res, err := dnsx.New(dnsx.Options{Server: dns.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	fd := &fakeDialer{}
	pd := &policyDialer{fakeDialer: fd, real: &delivery.Dialer{Resolver: res, Logger: slog.New(slog.DiscardHandler)}}
	q := New(sp, pd, Options{IdleTimeout: 200 * time.Millisecond, RetryInitial: time.Hour, Shaper: sh, Logger: slog.New(slog.DiscardHandler)})
	q.Start()
	defer q.Stop(context.Background())

	m, rs := put(t, sp, "s@a.test", "x@b.test")
	m.Params.TLSOptional = true // TLS-Required: No
	rs[0].Route = &pipeline.Route{Kind: pipeline.RouteMX, TLS: pipeline.TLSDANEOrMTASTS}
	q.Enqueue(m, rs)
	testutil.WaitFor(t, "the TLS-Required: No message refused", func() bool { return len(events(t, sp, m.ID)) == 1 })
	h, _ := sp.History(m.ID)
	if e := h[0]; e.Response == nil || e.Response.Code != 550 || e.Response.Enhanced != "5.7.1" || !strings.Contains(e.Response.Text, "TLS-Required: No") {
		t.Fatalf("refusal %+v %+v", e, e.Response)
	}

	m2, rs2 := put(t, sp, "s@a.test", "y@b.test")
	q.Enqueue(m2, rs2)
	sent := func() int {
		fd.mu.Lock()
		defer fd.mu.Unlock()
		return len(fd.sent)
	}
	testutil.WaitFor(t, "the next message to the site delivered or held", func() bool {
		return sent() == 1 || q.Stats().Waiting == 1
	})
	if sent() != 1 {
		t.Fatalf("the next message to the site was held (the site suspended by our own refusal): stats %+v", q.Stats())
	}
}
