package relay

import (
	"context"
	"errors"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/queue"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

// routeStage routes by recipient local part: "perm" rejects, "temp"
// tempfails, "drop" discards, anything else goes to a relay.
type routeStage struct{}

func (routeStage) Name() string { return "route" }
func (routeStage) OnRoute(ctx context.Context, m *pipeline.Message, r *pipeline.Recipient) (pipeline.Verdict, error) {
	switch r.Local {
	case "perm":
		return pipeline.RejectVerdict(550, pipeline.EnhancedCode{5, 1, 1}, "no such user"), nil
	case "temp":
		return pipeline.TempfailVerdict(451, pipeline.EnhancedCode{4, 7, 1}, "later"), nil
	case "drop":
		return pipeline.DiscardVerdict("dropped"), nil
	}
	return pipeline.RouteVerdict(&pipeline.Route{Kind: pipeline.RouteRelay, Host: "smart.test"}), nil
}

type discardStage struct{}

func (discardStage) Name() string { return "discard" }
func (discardStage) OnMessage(ctx context.Context, m *pipeline.Message) (pipeline.Verdict, error) {
	if m.Header.Get("Subject") == "discard me" {
		return pipeline.DiscardVerdict("spam"), nil
	}
	return pipeline.Verdict{}, nil
}

type dsnBouncer struct{}

func (dsnBouncer) Bounce(ctx context.Context, m *spool.Meta, data []byte, f []queue.Failure) ([]byte, *pipeline.Route, error) {
	return []byte("Subject: dsn\r\n\r\n" + f[0].Recipient + "\r\n"), nil, nil
}

type parkDialer struct{}

func (parkDialer) Dial(ctx context.Context, r *pipeline.Route, domain string) (queue.Conn, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func setup(t *testing.T) (*Relay, *spool.Spool) {
	t.Helper()
	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	chain, err := pipeline.Compile([]pipeline.Stage{discardStage{}, routeStage{}}, pipeline.ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The dialer parks every delivery until the test ends, so the spool
	// shows exactly what acceptance wrote.
	q := queue.New(sp, parkDialer{}, dsnBouncer{}, queue.Options{})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		defer cancel()
		q.Stop(ctx)
	})
	return New(chain, sp, q, nil), sp
}

func message(t *testing.T, r *Relay, subject string, rcpts ...string) *pipeline.Message {
	t.Helper()
	txn := &pipeline.Txn{Conn: &pipeline.Conn{Source: pipeline.SourceSMTP}, ID: r.NewID(), Sender: "s@a.test", Received: time.Now()}
	for _, a := range rcpts {
		rc, err := pipeline.NewRecipient(a)
		if err != nil {
			t.Fatal(err)
		}
		txn.Recipients = append(txn.Recipients, rc)
	}
	m, err := pipeline.ParseMessage(txn, []byte("Subject: "+subject+"\r\n\r\nbody\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// queued lists "msgid-prefix:addr" of every spooled recipient.
func queued(t *testing.T, sp *spool.Spool) []string {
	var out []string
	sp.ScanRecipients(func(m *spool.Meta, r *spool.Recipient) error {
		out = append(out, m.Source+":"+r.Address)
		return nil
	})
	sort.Strings(out)
	return out
}

func eventTypes(t *testing.T, sp *spool.Spool, id string) string {
	h, _ := sp.History(id)
	var out []string
	for _, e := range h {
		out = append(out, e.Type+":"+e.Recipient)
	}
	return strings.Join(out, " ")
}

func TestSMTPPartialRouteRejectBounces(t *testing.T) {
	r, sp := setup(t)
	m := message(t, r, "hi", "ok@b.test", "perm@b.test", "drop@b.test")
	rc, err := r.Submit(context.Background(), m, Options{BounceRouteRejects: true})
	if err != nil {
		t.Fatal(err)
	}
	if rc.Queued != 1 {
		t.Fatalf("queued %d", rc.Queued)
	}
	got := queued(t, sp)
	want := []string{"dsn:s@a.test", "smtp:ok@b.test"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("spooled %v, want %v (the refused recipient bounces to the sender)", got, want)
	}
	if ev := eventTypes(t, sp, m.ID); ev != "received:ok@b.test rejected:perm@b.test discarded:drop@b.test" {
		t.Fatalf("events %q", ev)
	}
}

func TestSMTPTemporaryRouteFailureFailsWholeMessage(t *testing.T) {
	r, sp := setup(t)
	m := message(t, r, "hi", "ok@b.test", "temp@b.test")
	_, err := r.Submit(context.Background(), m, Options{BounceRouteRejects: true})
	if rep := pipeline.Reply(err); rep.Code != 451 {
		t.Fatalf("reply %v, want the 451 of the tempfailed recipient", err)
	}
	if got := queued(t, sp); len(got) != 0 {
		t.Fatalf("spooled %v after a 4xx: the client will retry every recipient", got)
	}
}

func TestHTTPPerRecipientResults(t *testing.T) {
	r, sp := setup(t)
	m := message(t, r, "hi", "ok@b.test", "temp@b.test", "perm@b.test")
	m.Conn.Source = pipeline.SourceHTTP
	rc, err := r.Submit(context.Background(), m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var st []string
	for _, x := range rc.Recipients {
		st = append(st, x.Address+"="+x.Status)
	}
	if strings.Join(st, " ") != "ok@b.test=queued temp@b.test=rejected perm@b.test=rejected" {
		t.Fatalf("results %v", st)
	}
	if rc.Recipients[1].Err.Code != 451 || rc.Recipients[2].Err.Code != 550 {
		t.Fatalf("codes %v %v", rc.Recipients[1].Err, rc.Recipients[2].Err)
	}
	if got := queued(t, sp); strings.Join(got, ",") != "http:ok@b.test" {
		t.Fatalf("spooled %v (no DSN over HTTP: the answer reports it)", got)
	}
}

func TestAllRefusedAndDiscarded(t *testing.T) {
	r, sp := setup(t)
	m := message(t, r, "hi", "perm@b.test")
	if _, err := r.Submit(context.Background(), m, Options{BounceRouteRejects: true}); pipeline.Reply(err).Code != 550 {
		t.Fatalf("all refused: %v", err)
	}
	if ev := eventTypes(t, sp, m.ID); ev != "rejected:perm@b.test" {
		t.Fatalf("events %q", ev)
	}
	d := message(t, r, "discard me", "ok@b.test")
	rc, err := r.Submit(context.Background(), d, Options{})
	if err != nil || !rc.Discarded {
		t.Fatalf("discard: %+v %v", rc, err)
	}
	if ev := eventTypes(t, sp, d.ID); ev != "discarded:ok@b.test" {
		t.Fatalf("events %q", ev)
	}
	if got := queued(t, sp); len(got) != 0 {
		t.Fatalf("spooled %v", got)
	}
}

func TestBatchIsolationAndBeforeCommit(t *testing.T) {
	r, sp := setup(t)
	a := message(t, r, "a", "ok@b.test")
	b := message(t, r, "b", "perm@b.test")
	c := message(t, r, "c", "ok2@b.test")
	failC := errors.New("idempotency store down")
	res := r.SubmitBatch(context.Background(), []*pipeline.Message{a, b, c}, Options{
		BeforeCommit: func(_ *spool.Batch, m *pipeline.Message, _ *Receipt) error {
			if m == c {
				return failC
			}
			return nil
		},
	})
	if res[0].Err != nil || res[1].Err == nil || !errors.Is(res[2].Err, failC) {
		t.Fatalf("results %+v", res)
	}
	if got := queued(t, sp); strings.Join(got, ",") != "smtp:ok@b.test" {
		t.Fatalf("spooled %v: only the first message may be queued", got)
	}
	if _, err := sp.Body(c.ID); err == nil {
		t.Fatal("a message whose BeforeCommit failed left its body in the spool")
	}
}

func TestCloseRefusesNewSubmissions(t *testing.T) {
	r, sp := setup(t)
	if !r.Close(context.Background()) {
		t.Fatal("Close did not finish with nothing in flight")
	}
	m := message(t, r, "late", "ok@b.test")
	if _, err := r.Submit(context.Background(), m, Options{}); pipeline.Reply(err).Code != 421 {
		t.Fatalf("submit after Close: %v", err)
	}
	res := r.SubmitBatch(context.Background(), []*pipeline.Message{m}, Options{})
	if pipeline.Reply(res[0].Err).Code != 421 {
		t.Fatalf("batch after Close: %v", res[0].Err)
	}
	if got := queued(t, sp); len(got) != 0 {
		t.Fatalf("spooled %v after Close", got)
	}
}
