package queue

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// egressDialer is a fakeDialer that records the Egress of every dial.
type egressDialer struct {
	*fakeDialer
	mu  sync.Mutex
	egs []delivery.Egress
}

func (d *egressDialer) Dial(ctx context.Context, r *pipeline.Route, domain string) (Conn, error) {
	return d.DialFrom(ctx, r, domain, delivery.Egress{})
}

func (d *egressDialer) DialFrom(ctx context.Context, r *pipeline.Route, domain string, eg delivery.Egress) (Conn, error) {
	d.mu.Lock()
	d.egs = append(d.egs, eg)
	d.mu.Unlock()
	return d.fakeDialer.Dial(ctx, r, domain)
}

// TestREQUIRETLSDestinations: messages with REQUIRETLS (and a sender) are
// dialled with Egress.RequireTLS, "TLS-Required: No" ones with
// IgnoreTLSPolicy, each on connections of their own; a DSN (null sender)
// about a REQUIRETLS message and ordinary mail share the plain ones.
func TestREQUIRETLSDestinations(t *testing.T) {
	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	d := &egressDialer{fakeDialer: &fakeDialer{}}
	q := newQueue(sp, d, fakeBouncer{}, Options{IdleTimeout: time.Minute})
	q.Start()
	defer q.Stop(context.Background())

	putWith := func(sender, source, rcpt string, p pipeline.MailParams) {
		m := &spool.Meta{ID: sp.NewID(), Sender: sender, Source: source, Received: time.Now(), Size: 4, Params: p}
		b := sp.NewBatch()
		_ = b.PutMessage(m, []byte("data"))
		r := &spool.Recipient{MsgID: m.ID, Address: rcpt, Domain: "b.test", Route: pipeline.MX()}
		_ = b.PutRecipient(r)
		if err := b.Commit(true); err != nil {
			t.Fatal(err)
		}
		q.Enqueue(m, []*spool.Recipient{r})
	}
	// One at a time, so that a connection left open would be reused.
	for i, c := range []struct {
		sender, source string
		p              pipeline.MailParams
	}{
		{"a@a.test", "smtp", pipeline.MailParams{}},
		{"a@a.test", "smtp", pipeline.MailParams{RequireTLS: true}},
		{"", "dsn", pipeline.MailParams{RequireTLS: true}},
		{"a@a.test", "smtp", pipeline.MailParams{TLSOptional: true}},
		{"a@a.test", "smtp", pipeline.MailParams{RequireTLS: true, TLSOptional: true}},
		{"", "smtp", pipeline.MailParams{RequireTLS: true}}, // a client's null sender: no exemption
	} {
		putWith(c.sender, c.source, "r"+string(rune('0'+i))+"@b.test", c.p)
		testutil.WaitFor(t, "delivered", func() bool { return q.Stats().Messages == 0 })
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	want := []delivery.Egress{{}, {RequireTLS: true}, {IgnoreTLSPolicy: true}}
	if !slices.Equal(d.egs, want) {
		t.Fatalf("dials %+v, want %+v (one per kind, the open ones reused)", d.egs, want)
	}
	for i, env := range d.envs {
		if env.Params.RequireTLS != (i == 1 || i == 2 || i == 4 || i == 5) {
			t.Fatalf("message %d: Params %+v", i, env.Params)
		}
		if env.OwnReport != (i == 2) {
			t.Fatalf("message %d: OwnReport %v: only a DSN of our own is exempt from REQUIRETLS", i, env.OwnReport)
		}
	}
}
