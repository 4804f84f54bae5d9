package queue

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// fakeDialer scripts replies per recipient address; it stands in for
// internal/delivery, which has its own tests against real SMTP servers.
// End-to-end tests in cmd/sluice cover both together.
type fakeDialer struct {
	mu        sync.Mutex
	dials     int
	dialErr   error
	replies   map[string][]error // per rcpt, consumed in order; empty = accept
	sent      []string           // "rcpt" per accepted delivery
	data      map[string][]byte
	maxConns  int
	open      int
	sendDelay time.Duration
	txnErr    error              // returned by every Send as the transaction's error
	okReply   *pipeline.Response // the reply of accepted recipients
	envs      []*delivery.Envelope
}

func (f *fakeDialer) Dial(ctx context.Context, r *pipeline.Route, domain string) (Conn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dials++
	if f.dialErr != nil {
		return nil, f.dialErr
	}
	f.open++
	if f.open > f.maxConns {
		f.maxConns = f.open
	}
	return &fakeConn{f: f}, nil
}

type fakeConn struct{ f *fakeDialer }

func (c *fakeConn) Deliver(ctx context.Context, env *delivery.Envelope, data []byte) ([]delivery.Result, error) {
	if c.f.sendDelay > 0 {
		time.Sleep(c.f.sendDelay)
	}
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	c.f.envs = append(c.f.envs, env)
	out := make([]delivery.Result, len(env.Rcpts))
	for i, rc := range env.Rcpts {
		r := rc.Addr
		if q := c.f.replies[r]; len(q) > 0 {
			out[i].Err = q[0]
			out[i].Reply = pipeline.ResponseOf(q[0])
			c.f.replies[r] = q[1:]
			continue
		}
		out[i].Reply = c.f.okReply
		c.f.sent = append(c.f.sent, r)
		if c.f.data == nil {
			c.f.data = map[string][]byte{}
		}
		c.f.data[r] = data
	}
	return out, c.f.txnErr
}
func (c *fakeConn) Remote() pipeline.Remote { return pipeline.Remote{Host: "mx.test", IP: "127.0.0.1"} }
func (c *fakeConn) Usable() bool            { return true }
func (c *fakeConn) Close() error {
	c.f.mu.Lock()
	c.f.open--
	c.f.mu.Unlock()
	return nil
}

type fakeBouncer struct{}

// Bounce stages a minimal DSN as the relay does (the relay's own tests
// cover the DSN's content and its pass through the pipeline).
func (fakeBouncer) Bounce(ctx context.Context, b *spool.Batch, m *spool.Meta, data []byte, failed []Failure) (*spool.Meta, []*spool.Recipient) {
	var sb strings.Builder
	sb.WriteString("Subject: bounce\r\n\r\n")
	for _, f := range failed {
		fmt.Fprintf(&sb, "%s %v %d\r\n", f.Recipient, f.Expired, f.Reply.Code)
	}
	_, domain, _ := pipeline.SplitAddress(m.Sender)
	bm := &spool.Meta{ID: m.ID + "B", Source: pipeline.SourceDSN, Received: time.Now(), Size: sb.Len()}
	r := &spool.Recipient{MsgID: bm.ID, Address: m.Sender, Domain: domain, Route: pipeline.MX()}
	if err := b.PutMessage(bm, []byte(sb.String())); err != nil {
		return nil, nil
	}
	_ = b.PutRecipient(r)
	b.AddEvent(&pipeline.Event{Type: pipeline.EventReceived, MessageID: bm.ID, Recipient: m.Sender, Source: pipeline.SourceDSN})
	return bm, []*spool.Recipient{r}
}

func put(t *testing.T, sp *spool.Spool, sender string, rcpts ...string) (*spool.Meta, []*spool.Recipient) {
	t.Helper()
	m := &spool.Meta{ID: sp.NewID(), Sender: sender, Source: "smtp", Received: time.Now(), Size: 4}
	b := sp.NewBatch()
	_ = b.PutMessage(m, []byte("data"))
	var rs []*spool.Recipient
	for i, a := range rcpts {
		_, dom, _ := pipeline.SplitAddress(a)
		r := &spool.Recipient{MsgID: m.ID, Idx: i, Address: a, Domain: dom, Route: pipeline.MX()}
		_ = b.PutRecipient(r)
		rs = append(rs, r)
	}
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	return m, rs
}

func events(t *testing.T, sp *spool.Spool, id string) []string {
	h, err := sp.History(id)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range h {
		testutil.ValidateEventValue(t, &e)
		out = append(out, e.Type+":"+e.Recipient)
	}
	return out
}

var (
	temp = &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 0, 0}, Message: "try later"}
	perm = &pipeline.Error{Code: 550, Enhanced: pipeline.EnhancedCode{5, 1, 1}, Message: "no such user"}
)

func TestPerRecipientOutcomesRetryAndBounce(t *testing.T) {
	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	fd := &fakeDialer{replies: map[string][]error{
		"retry@b.test": {temp, temp},
		"bad@b.test":   {perm},
	}}
	q := newQueue(sp, fd, fakeBouncer{}, Options{RetryInitial: 20 * time.Millisecond, RetryMax: 40 * time.Millisecond})
	q.Start()
	defer q.Stop(context.Background())
	m, rs := put(t, sp, "sender@a.test", "ok@b.test", "retry@b.test", "bad@b.test")
	q.Enqueue(m, rs)

	testutil.WaitFor(t, "all settled", func() bool { return q.Stats().Messages == 0 })
	got := strings.Join(events(t, sp, m.ID), " ")
	for _, want := range []string{"delivered:ok@b.test", "bounced:bad@b.test", "deferred:retry@b.test", "delivered:retry@b.test"} {
		if !strings.Contains(got, want) {
			t.Errorf("events %q lack %q", got, want)
		}
	}
	if n := strings.Count(got, "deferred:retry@b.test"); n != 2 {
		t.Errorf("retry deferred %d times, want 2: %s", n, got)
	}
	// The bounce went to the sender, once, and mentions only the bad rcpt.
	fd.mu.Lock()
	defer fd.mu.Unlock()
	if d := string(fd.data["sender@a.test"]); !strings.Contains(d, "bad@b.test false 550") || strings.Contains(d, "retry@") {
		t.Errorf("bounce = %q", d)
	}
	if _, err := sp.Body(m.ID); err == nil {
		t.Error("message body still spooled after every recipient settled")
	}
}

func TestNullSenderNeverBounced(t *testing.T) {
	sp, _ := spool.Open(t.TempDir(), spool.Options{})
	defer sp.Close()
	fd := &fakeDialer{replies: map[string][]error{"bad@b.test": {perm}}}
	q := newQueue(sp, fd, fakeBouncer{}, Options{})
	q.Start()
	defer q.Stop(context.Background())
	m, rs := put(t, sp, "", "bad@b.test")
	q.Enqueue(m, rs)
	testutil.WaitFor(t, "settled", func() bool { return q.Stats().Messages == 0 })
	time.Sleep(50 * time.Millisecond) // a wrong bounce would be dispatched by now
	fd.mu.Lock()
	defer fd.mu.Unlock()
	if len(fd.sent) != 0 || fd.dials != 1 {
		t.Fatalf("a bounce was sent for a null sender: sent=%v dials=%d", fd.sent, fd.dials)
	}
}

func TestExpiryAndDestinationDown(t *testing.T) {
	sp, _ := spool.Open(t.TempDir(), spool.Options{})
	defer sp.Close()
	fd := &fakeDialer{dialErr: &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 4, 1}, Message: "all MX hosts unreachable"}}
	q := newQueue(sp, fd, fakeBouncer{}, Options{RetryInitial: 10 * time.Millisecond, RetryMax: 20 * time.Millisecond, QueueLifetime: 150 * time.Millisecond})
	q.Start()
	defer q.Stop(context.Background())
	m, rs := put(t, sp, "s@a.test", "x@down.test")
	q.Enqueue(m, rs)
	testutil.WaitFor(t, "expired", func() bool {
		ev := events(t, sp, m.ID)
		return len(ev) > 0 && ev[len(ev)-1] == "expired:x@down.test"
	})
	ev := events(t, sp, m.ID)
	if ev[0] != "deferred:x@down.test" {
		t.Fatalf("first outcome %v", ev)
	}
}

func TestConnectionReuseAndReload(t *testing.T) {
	dir := t.TempDir()
	sp, _ := spool.Open(dir, spool.Options{})
	var ids []string
	for i := 0; i < 20; i++ {
		m, _ := put(t, sp, "s@a.test", fmt.Sprintf("r%d@b.test", i))
		ids = append(ids, m.ID)
	}
	sp.Close()

	sp, _ = spool.Open(dir, spool.Options{})
	defer sp.Close()
	fd := &fakeDialer{}
	q := New(sp, fd, Options{MaxPerDestination: 2, IdleTimeout: time.Second})
	n, err := q.Load()
	if err != nil || n != 20 {
		t.Fatalf("Load = %d, %v", n, err)
	}
	q.Start()
	defer q.Stop(context.Background())
	testutil.WaitFor(t, "delivered", func() bool { return q.Stats().Messages == 0 })
	fd.mu.Lock()
	defer fd.mu.Unlock()
	if len(fd.sent) != 20 {
		t.Fatalf("sent %d", len(fd.sent))
	}
	if fd.dials > 2 || fd.maxConns > 2 {
		t.Fatalf("dials=%d maxConns=%d: connections were not reused or the limit was exceeded", fd.dials, fd.maxConns)
	}
}

func TestBackoffGrowsAndCaps(t *testing.T) {
	q := New(nil, nil, Options{RetryInitial: time.Second, RetryMax: 10 * time.Second, RetryFactor: 2, RetryJitter: 0})
	for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 10: 10 * time.Second} {
		if got := q.backoff(n); got != want {
			t.Errorf("backoff(%d) = %v, want %v", n, got, want)
		}
	}
	q.o.RetryJitter = 0.2
	for i := 0; i < 100; i++ {
		if d := q.backoff(2); d < 1600*time.Millisecond || d > 2400*time.Millisecond {
			t.Fatalf("jittered backoff %v outside ±20%% of 2s", d)
		}
	}
}

// A destination forgotten while idle must not be split in two: an item
// coming back from the timer heap with the forgotten object joins the
// destination registered for its key now.
func TestForgottenDestinationIsReused(t *testing.T) {
	q := New(nil, nil, Options{})
	q.mu.Lock()
	defer q.mu.Unlock()
	q.stopping = true // no workers: inspect the ready lists
	forgotten := &dest{key: "k", wake: make(chan struct{}, 1)}
	current := &dest{key: "k", wake: make(chan struct{}, 1)}
	q.dests["k"] = current
	it := &item{dest: forgotten, msg: q.msgs.add("m", 0), id: "m"}
	q.schedule(it, time.Now())
	if len(current.ready) != 1 || len(forgotten.ready) != 0 || it.dest != current {
		t.Fatalf("item joined the forgotten destination (current %d, forgotten %d)", len(current.ready), len(forgotten.ready))
	}
	// With no destination registered, the item's own becomes the one.
	delete(q.dests, "k")
	it2 := &item{dest: forgotten, msg: it.msg, id: it.id}
	q.schedule(it2, time.Now())
	if q.dests["k"] != forgotten || len(forgotten.ready) != 1 {
		t.Fatal("a returning destination was not registered again")
	}
}

// A burst for one destination is spread over up to MaxPerDestination
// connections, not left to the one worker that happened to be idle.
func TestBurstUsesSeveralConnections(t *testing.T) {
	sp, _ := spool.Open(t.TempDir(), spool.Options{})
	defer sp.Close()
	fd := &fakeDialer{sendDelay: 30 * time.Millisecond}
	q := New(sp, fd, Options{MaxPerDestination: 4, IdleTimeout: time.Second})
	q.Start()
	defer q.Stop(context.Background())
	// One message first, so that a worker is idle when the burst comes.
	m, rs := put(t, sp, "s@a.test", "first@b.test")
	q.Enqueue(m, rs)
	testutil.WaitFor(t, "the first delivery", func() bool { return q.Stats().Messages == 0 })
	for i := 0; i < 12; i++ {
		m, rs := put(t, sp, "s@a.test", fmt.Sprintf("r%d@b.test", i))
		q.Enqueue(m, rs)
	}
	testutil.WaitFor(t, "the burst", func() bool { return q.Stats().Messages == 0 })
	fd.mu.Lock()
	defer fd.mu.Unlock()
	if fd.maxConns < 2 || fd.maxConns > 4 {
		t.Fatalf("burst used %d connections at once, want 2..4", fd.maxConns)
	}
}

// A recipient refused with a 5xx at RCPT bounces even when the connection
// broke afterwards; the others are deferred.
func TestOwnPermanentReplyWinsOverConnectionError(t *testing.T) {
	sp, _ := spool.Open(t.TempDir(), spool.Options{})
	defer sp.Close()
	fd := &fakeDialer{replies: map[string][]error{"bad@b.test": {perm}}, txnErr: temp}
	q := New(sp, fd, Options{RetryInitial: time.Hour})
	q.Start()
	defer q.Stop(context.Background())
	m, rs := put(t, sp, "s@a.test", "bad@b.test", "good@b.test")
	q.Enqueue(m, rs)
	testutil.WaitFor(t, "both outcomes", func() bool { return len(events(t, sp, m.ID)) == 2 })
	got := strings.Join(events(t, sp, m.ID), " ")
	if !strings.Contains(got, "bounced:bad@b.test") || !strings.Contains(got, "deferred:good@b.test") {
		t.Fatalf("events %q", got)
	}
}

func newQueue(sp *spool.Spool, d Dialer, b Bouncer, o Options) *Queue {
	q := New(sp, d, o)
	q.SetBouncer(b)
	return q
}

// TestEventsCarryTheReplyReceived: the parameters spooled with the message
// and its recipients reach the connection; a delivered event carries the
// next hop's own reply to the end of data; a 421 is recorded as 421 and
// deferred.
func TestEventsCarryTheReplyReceived(t *testing.T) {
	sp, _ := spool.Open(t.TempDir(), spool.Options{})
	defer sp.Close()
	closing := &pipeline.Error{Code: 421, Enhanced: pipeline.EnhancedCode{4, 7, 0}, Message: "too many errors, closing"}
	fd := &fakeDialer{
		replies: map[string][]error{"busy@b.test": {closing}},
		okReply: &pipeline.Response{Code: 250, Enhanced: "2.6.0", Text: "queued as 4711"},
	}
	q := newQueue(sp, fd, fakeBouncer{}, Options{RetryInitial: time.Hour})
	q.Start()
	defer q.Stop(context.Background())

	m := &spool.Meta{ID: sp.NewID(), Sender: `"odd sender"@a.test`, Source: "smtp", Received: time.Now(), Size: 4,
		Params: pipeline.MailParams{Body: pipeline.Body8BitMIME, SMTPUTF8: true, Ret: "HDRS", EnvID: "env 1"}}
	b := sp.NewBatch()
	_ = b.PutMessage(m, []byte("data"))
	rs := []*spool.Recipient{
		{MsgID: m.ID, Idx: 0, Address: `"odd user"@b.test`, Domain: "b.test", Route: pipeline.MX(),
			Params: pipeline.RcptParams{Notify: []string{"SUCCESS"}, ORCPT: "rfc822;x@b.test"}},
		{MsgID: m.ID, Idx: 1, Address: "busy@b.test", Domain: "b.test", Route: pipeline.MX()},
	}
	for _, r := range rs {
		_ = b.PutRecipient(r)
	}
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	q.Enqueue(m, rs)
	var hist []pipeline.Event
	testutil.WaitFor(t, "both outcomes", func() bool {
		hist, _ = sp.History(m.ID)
		return len(hist) >= 2
	})
	got := map[string]*pipeline.Event{}
	for i := range hist {
		testutil.ValidateEventValue(t, &hist[i])
		got[hist[i].Recipient] = &hist[i]
	}
	if e := got[`"odd user"@b.test`]; e == nil || e.Type != pipeline.EventDelivered ||
		*e.Response != (pipeline.Response{Code: 250, Enhanced: "2.6.0", Text: "queued as 4711"}) {
		t.Errorf("delivered event = %+v", e)
	}
	if e := got["busy@b.test"]; e == nil || e.Type != pipeline.EventDeferred || e.Response.Code != 421 || e.Response.Enhanced != "4.7.0" {
		t.Errorf("421 recorded as %+v", e)
	}
	fd.mu.Lock()
	defer fd.mu.Unlock()
	env := fd.envs[0]
	if env.From != m.Sender || env.Params != m.Params || env.Rcpts[0].Addr != `"odd user"@b.test` ||
		env.Rcpts[0].Params.ORCPT != "rfc822;x@b.test" || env.Rcpts[0].Params.Notify[0] != "SUCCESS" {
		t.Errorf("envelope = %+v", env)
	}
}

// realDialer adapts internal/delivery to the queue.
type realDialer struct{ d *delivery.Dialer }

func (r realDialer) Dial(ctx context.Context, route *pipeline.Route, domain string) (Conn, error) {
	s, err := r.d.Dial(ctx, route, domain)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Issue 13 item 1, the delivery side: quoted addresses go from the spool
// through the queue and the SMTP client to a strict next hop byte for
// byte, and the delivered events carry the hop's reply.
func TestQuotedAddressesReachAStrictHop(t *testing.T) {
	sp, _ := spool.Open(t.TempDir(), spool.Options{})
	defer sp.Close()
	hop := testutil.StartHop(t, testutil.HopOptions{Extensions: []string{"PIPELINING", "ENHANCEDSTATUSCODES"}})
	q := newQueue(sp, realDialer{delivery.NewDialer(config.Delivery{Hostname: "sluice.test"}, nil)}, fakeBouncer{}, Options{})
	q.Start()
	defer q.Stop(context.Background())
	route := &pipeline.Route{Kind: pipeline.RouteRelay, Host: hop.IP, Port: hop.Port, TLS: pipeline.TLSNone}
	m := &spool.Meta{ID: sp.NewID(), Sender: `"odd sender"@origin.example`, Source: "smtp", Received: time.Now(), Size: 4}
	b := sp.NewBatch()
	_ = b.PutMessage(m, []byte("Subject: x\r\n\r\nbody\r\n"))
	rs := []*spool.Recipient{
		{MsgID: m.ID, Idx: 0, Address: `"odd user"@dest.example`, Domain: "dest.example", Route: route},
		{MsgID: m.ID, Idx: 1, Address: `"a@b"@dest.example`, Domain: "dest.example", Route: route},
	}
	for _, r := range rs {
		_ = b.PutRecipient(r)
	}
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	q.Enqueue(m, rs)
	testutil.WaitFor(t, "delivery", func() bool { return q.Stats().Messages == 0 })
	got := hop.Messages()
	if len(got) != 1 || got[0].Mail != `MAIL FROM:<"odd sender"@origin.example>` ||
		strings.Join(got[0].Rcpts, "|") != `RCPT TO:<"odd user"@dest.example>|RCPT TO:<"a@b"@dest.example>` {
		t.Fatalf("hop got %+v", got)
	}
	h, _ := sp.History(m.ID)
	for _, e := range h {
		testutil.ValidateEventValue(t, &e)
		if e.Type != pipeline.EventDelivered || e.Response.Text != "accepted as hop-1" {
			t.Errorf("event %s %s %+v", e.Type, e.Recipient, e.Response)
		}
	}
	if len(h) != 2 || h[0].Recipient != `"odd user"@dest.example` && h[1].Recipient != `"odd user"@dest.example` {
		t.Errorf("events %+v", h)
	}
}

// lowFS reports the free space avail holds, whatever the real filesystem.
type lowFS struct {
	vfs.FS
	avail *atomic.Uint64
}

func (f lowFS) GetDiskUsage(string) (vfs.DiskUsage, error) {
	a := f.avail.Load()
	return vfs.DiskUsage{AvailBytes: a, TotalBytes: 1 << 40, UsedBytes: 1<<40 - a}, nil
}

// TestDeliveryHeldWhileSpoolCannotRecord: below the spool's write floor
// no outcome could be recorded, so a delivery made then would be made
// again later (a duplicate). The queue holds it instead, logs that once,
// and delivers it exactly once when space returns.
func TestDeliveryHeldWhileSpoolCannotRecord(t *testing.T) {
	var avail atomic.Uint64
	avail.Store(1 << 30)
	var logs testutil.SyncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	sp, err := spool.Open("spool", spool.Options{FS: lowFS{FS: vfs.NewMem(), avail: &avail}, MinFree: 1 << 20, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	m, rs := put(t, sp, "sender@a.test", "ok@b.test")
	avail.Store(1000) // below min_free/4: the write floor
	testutil.WaitFor(t, "the spool below its write floor", func() bool { return !sp.Writable() })

	fd := &fakeDialer{}
	q := newQueue(sp, fd, fakeBouncer{}, Options{Logger: log, RetryInitial: 20 * time.Millisecond})
	q.Start()
	defer q.Stop(context.Background())
	q.Enqueue(m, rs)
	testutil.WaitFor(t, "the hold logged", func() bool { return strings.Contains(logs.String(), "delivery is held") })
	fd.mu.Lock()
	dials := fd.dials
	fd.mu.Unlock()
	if dials != 0 {
		t.Fatalf("%d connections made while no outcome could be recorded", dials)
	}

	avail.Store(1 << 30)
	testutil.WaitFor(t, "delivered once space returned", func() bool { return q.Stats().Messages == 0 })
	fd.mu.Lock()
	defer fd.mu.Unlock()
	if len(fd.sent) != 1 {
		t.Fatalf("sent %v; want exactly one delivery", fd.sent)
	}
	if got := strings.Join(events(t, sp, m.ID), " "); got != "delivered:ok@b.test" {
		t.Errorf("events %q; want one delivered (the hold counts no attempt)", got)
	}
	if n := strings.Count(logs.String(), "delivery is held"); n != 1 {
		t.Errorf("the hold logged %d times; want once per stretch", n)
	}
}
