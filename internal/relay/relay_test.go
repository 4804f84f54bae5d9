package relay

import (
	"context"
	"errors"
	"log/slog"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/queue"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
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

// stampStage adds X-Stage to every message at on_message, as data.
type stampStage struct{}

func (stampStage) Name() string { return "stamp" }
func (stampStage) OnMessage(ctx context.Context, m *pipeline.Message) (pipeline.Verdict, error) {
	var v pipeline.Verdict
	v.Edits.AddHeader("X-Stage", "seen "+m.Conn.Source)
	return v, nil
}

type parkDialer struct{}

func (parkDialer) Dial(ctx context.Context, r *pipeline.Route, domain string) (queue.Conn, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func setup(t *testing.T, extra ...pipeline.Stage) (*Relay, *spool.Spool) {
	t.Helper()
	return setupWith(t, 0, extra...)
}

// setupWith is setup with a delay-warning interval (Options.DelayWarning).
func setupWith(t *testing.T, delayWarning time.Duration, extra ...pipeline.Stage) (*Relay, *spool.Spool) {
	t.Helper()
	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	stages := append([]pipeline.Stage{discardStage{}, stampStage{}, routeStage{}}, extra...)
	chain, err := pipeline.Compile(stages, pipeline.ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The dialer parks every delivery until the test ends, so the spool
	// shows exactly what acceptance wrote.
	q := queue.New(sp, parkDialer{}, queue.Options{Logger: slog.New(slog.DiscardHandler)})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		defer cancel()
		q.Stop(ctx)
	})
	r := NewSpool(NewPipeline(chain, nil), sp, q, Options{Hostname: "relay.test", Logger: slog.New(slog.DiscardHandler),
		DelayWarning: delayWarning})
	q.SetBouncer(r)
	return r, sp
}

// begin starts a transaction from s@a.test on a relay-network connection
// of source src and adds rcpts.
func begin(t *testing.T, r *Relay, src string, rcpts ...string) *Txn {
	t.Helper()
	sess := r.NewSession(&pipeline.Conn{Source: src, RelayNetwork: true})
	txn, err := sess.Begin(context.Background(), "s@a.test", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range rcpts {
		if _, err := txn.Rcpt(context.Background(), a); err != nil {
			t.Fatal(err)
		}
	}
	return txn
}

func message(t *testing.T, txn *Txn, subject string) *pipeline.Message {
	t.Helper()
	m, err := pipeline.ParseMessage(txn.T, []byte("Subject: "+subject+"\r\n\r\nbody\r\n"))
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
		testutil.ValidateEventValue(t, &e)
		out = append(out, e.Type+":"+e.Recipient)
	}
	return strings.Join(out, " ")
}

// dsnOf returns the one DSN in the spool.
func dsnOf(t *testing.T, sp *spool.Spool) (*spool.Meta, string) {
	t.Helper()
	var meta *spool.Meta
	sp.ScanRecipients(func(m *spool.Meta, r *spool.Recipient) error {
		if m.Source == pipeline.SourceDSN {
			meta = m
		}
		return nil
	})
	if meta == nil {
		t.Fatal("no DSN in the spool")
	}
	b, err := sp.Body(meta.ID)
	if err != nil {
		t.Fatal(err)
	}
	return meta, string(b)
}

func TestSMTPPartialRouteRejectBounces(t *testing.T) {
	r, sp := setup(t)
	txn := begin(t, r, pipeline.SourceSMTP, "ok@b.test", "perm@b.test", "drop@b.test")
	rc, err := txn.Commit(context.Background(), message(t, txn, "hi"), CommitOptions{OneReply: true})
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
	if ev := eventTypes(t, sp, txn.ID()); ev != "received:ok@b.test rejected:perm@b.test discarded:drop@b.test" {
		t.Fatalf("events %q", ev)
	}
	// The DSN came through the front door: on_message stamped it, it has
	// events of its own, and it says what Sluice decided ("x-sluice;"),
	// not as if a remote server had said it.
	dm, body := dsnOf(t, sp)
	if !strings.Contains(body, "X-Stage: seen dsn") {
		t.Errorf("the DSN did not pass on_message:\n%s", body)
	}
	if !strings.Contains(body, "Diagnostic-Code: x-sluice; 550 5.1.1 no such user") || strings.Contains(body, "smtp;") {
		t.Errorf("DSN diagnostic:\n%s", body)
	}
	if ev := eventTypes(t, sp, dm.ID); ev != "received:s@a.test" {
		t.Errorf("DSN events %q", ev)
	}
	if dm.Meta["bounce_of"] != txn.ID() || dm.Sender != "" {
		t.Errorf("DSN meta %+v", dm)
	}
}

// TestBounceDiagnostics: the DSN of a delivery failure says "smtp;" only
// for what a remote server replied, with its Remote-MTA; what Sluice
// decided itself (an MX that does not exist) is "x-sluice;".
func TestBounceDiagnostics(t *testing.T) {
	remote := &pipeline.Error{Code: 550, Enhanced: pipeline.EnhancedCode{5, 1, 1}, Message: "user unknown",
		Cause: &delivery.ReplyError{Remote: pipeline.Remote{Host: "mx1.b.test", IP: "192.0.2.1"}, Command: "RCPT", Code: 550,
			Enhanced: pipeline.EnhancedCode{5, 1, 1}, Text: "user unknown"}}
	local := pipeline.Errorf(550, pipeline.EnhancedCode{5, 4, 4}, "MX host mx.nowhere.test does not exist")
	expired := pipeline.Errorf(451, pipeline.EnhancedCode{4, 4, 1}, "connection refused")
	for name, tc := range map[string]struct {
		f    queue.Failure
		want []string
		not  string
	}{
		"remote": {queue.Failure{Recipient: "x@b.test", Err: remote, Remote: "mx1.b.test"},
			[]string{"Diagnostic-Code: smtp; 550 5.1.1 user unknown", "Remote-MTA: dns; mx1.b.test", "Status: 5.1.1"}, "x-sluice"},
		"local": {queue.Failure{Recipient: "x@b.test", Err: local},
			[]string{"Diagnostic-Code: x-sluice; 550 5.4.4 MX host mx.nowhere.test does not exist", "Status: 5.4.4"}, "smtp;"},
		"expired": {queue.Failure{Recipient: "x@b.test", Err: expired, Expired: true},
			[]string{"Diagnostic-Code: x-sluice; 451 4.4.1 connection refused", "Status: 5.4.7", "Action: failed"}, "smtp;"},
	} {
		t.Run(name, func(t *testing.T) {
			r, sp := setup(t)
			m := &spool.Meta{ID: r.NewID(), Sender: "s@a.test", Source: pipeline.SourceSMTP, Received: time.Now()}
			b := sp.NewBatch()
			bm, rcpts := r.Bounce(context.Background(), b, m, []byte("Subject: orig\r\n\r\nbody\r\n"), []queue.Failure{tc.f})
			if bm == nil || len(rcpts) != 1 || rcpts[0].Address != "s@a.test" {
				t.Fatalf("bounce %+v %v", bm, rcpts)
			}
			if err := b.Commit(true); err != nil {
				t.Fatal(err)
			}
			_, body := dsnOf(t, sp)
			for _, w := range tc.want {
				if !strings.Contains(body, w) {
					t.Errorf("DSN lacks %q:\n%s", w, body)
				}
			}
			if strings.Contains(body, tc.not) {
				t.Errorf("DSN has %q:\n%s", tc.not, body)
			}
		})
	}
}

// dsnPolicy refuses, tempfails or discards DSNs at on_rcpt / on_message.
type dsnPolicy struct{ v pipeline.Verdict }

func (dsnPolicy) Name() string { return "dsnpolicy" }
func (d dsnPolicy) OnRcpt(ctx context.Context, txn *pipeline.Txn, r *pipeline.Recipient) (pipeline.Verdict, error) {
	if txn.Conn.Source == pipeline.SourceDSN {
		return d.v, nil
	}
	return pipeline.Verdict{}, nil
}

// TestBouncePolicy: a stage may refuse or discard a DSN (no bounce, and
// the refusal is recorded); a temporary failure must not lose the bounce.
func TestBouncePolicy(t *testing.T) {
	failed := []queue.Failure{{Recipient: "x@b.test", Err: pipeline.Errorf(550, pipeline.EnhancedCode{5, 1, 1}, "no")}}
	for name, tc := range map[string]struct {
		v      pipeline.Verdict
		bounce bool
	}{
		"reject":   {pipeline.RejectVerdict(550, pipeline.EnhancedCode{5, 7, 1}, "no backscatter"), false},
		"tempfail": {pipeline.TempfailVerdict(451, pipeline.EnhancedCode{4, 7, 1}, "later"), true},
		"accept":   {pipeline.AcceptVerdict(), true},
	} {
		t.Run(name, func(t *testing.T) {
			r, sp := setup(t, dsnPolicy{tc.v})
			m := &spool.Meta{ID: r.NewID(), Sender: "s@a.test", Source: pipeline.SourceSMTP, Received: time.Now()}
			b := sp.NewBatch()
			bm, _ := r.Bounce(context.Background(), b, m, nil, failed)
			if (bm != nil) != tc.bounce {
				t.Fatalf("bounce %+v, want %v", bm, tc.bounce)
			}
			b.Commit(true)
			// A bounce sent despite a temporary refusal has no "rejected"
			// event; a refused one has.
			if bm != nil {
				if ev := eventTypes(t, sp, bm.ID); ev != "received:s@a.test" {
					t.Fatalf("events of the bounce %q", ev)
				}
			}
		})
	}
}

func TestSMTPTemporaryRouteFailureFailsWholeMessage(t *testing.T) {
	r, sp := setup(t)
	txn := begin(t, r, pipeline.SourceSMTP, "ok@b.test", "temp@b.test")
	_, err := txn.Commit(context.Background(), message(t, txn, "hi"), CommitOptions{OneReply: true})
	if rep := pipeline.Reply(err); rep.Code != 451 {
		t.Fatalf("reply %v, want the 451 of the tempfailed recipient", err)
	}
	if got := queued(t, sp); len(got) != 0 {
		t.Fatalf("spooled %v after a 4xx: the client will retry every recipient", got)
	}
	// Every recipient has its "rejected" event, by the one rule.
	if ev := eventTypes(t, sp, txn.ID()); ev != "rejected:temp@b.test rejected:ok@b.test" {
		t.Fatalf("events %q", ev)
	}
}

func TestHTTPPerRecipientResults(t *testing.T) {
	r, sp := setup(t)
	txn := begin(t, r, pipeline.SourceHTTP, "ok@b.test", "temp@b.test", "perm@b.test")
	rc, err := txn.Commit(context.Background(), message(t, txn, "hi"), CommitOptions{})
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
	txn := begin(t, r, pipeline.SourceSMTP, "perm@b.test")
	if _, err := txn.Commit(context.Background(), message(t, txn, "hi"), CommitOptions{OneReply: true}); pipeline.Reply(err).Code != 550 {
		t.Fatalf("all refused: %v", err)
	}
	if ev := eventTypes(t, sp, txn.ID()); ev != "rejected:perm@b.test" {
		t.Fatalf("events %q", ev)
	}
	d := begin(t, r, pipeline.SourceSMTP, "ok@b.test")
	rc, err := d.Commit(context.Background(), message(t, d, "discard me"), CommitOptions{})
	if err != nil || !rc.Discarded {
		t.Fatalf("discard: %+v %v", rc, err)
	}
	if ev := eventTypes(t, sp, d.ID()); ev != "discarded:ok@b.test" {
		t.Fatalf("events %q", ev)
	}
	if got := queued(t, sp); len(got) != 0 {
		t.Fatalf("spooled %v", got)
	}
}

func TestBatchIsolationAndBeforeCommit(t *testing.T) {
	r, sp := setup(t)
	ctx := context.Background()
	var txns []*Txn
	var accs []*Accepted
	for _, rc := range []string{"ok@b.test", "perm@b.test", "ok2@b.test"} {
		txn := begin(t, r, pipeline.SourceHTTP, rc)
		acc, err := txn.Prepare(ctx, message(t, txn, "x"), CommitOptions{})
		if rc == "perm@b.test" {
			// A refused message does not affect the others.
			if err == nil {
				t.Fatal("perm@b.test was not refused")
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		txns, accs = append(txns, txn), append(accs, acc)
	}
	var seen []string
	res := r.CommitBatch(ctx, txns, accs, CommitOptions{
		BeforeCommit: func(_ *spool.Batch, a *Accepted) error {
			seen = append(seen, a.Msg.ID)
			return nil
		},
	})
	if res[0].Err != nil || res[1].Err != nil || len(seen) != 2 {
		t.Fatalf("results %+v, BeforeCommit saw %v", res, seen)
	}
	if got := queued(t, sp); strings.Join(got, ",") != "http:ok2@b.test,http:ok@b.test" {
		t.Fatalf("spooled %v", got)
	}
	// A BeforeCommit failure fails the whole batch: nothing is written.
	txn := begin(t, r, pipeline.SourceHTTP, "ok3@b.test")
	acc, err := txn.Prepare(ctx, message(t, txn, "y"), CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fail := errors.New("idempotency store down")
	res = r.CommitBatch(ctx, []*Txn{txn}, []*Accepted{acc}, CommitOptions{BeforeCommit: func(*spool.Batch, *Accepted) error { return fail }})
	if pipeline.Reply(res[0].Err).Code != 451 {
		t.Fatalf("result %+v", res[0])
	}
	if _, err := sp.Body(txn.ID()); err == nil {
		t.Fatal("a message whose BeforeCommit failed left its body in the spool")
	}
}

func TestCloseRefusesNewSubmissions(t *testing.T) {
	r, sp := setup(t)
	if !r.Close(context.Background()) {
		t.Fatal("Close did not finish with nothing in flight")
	}
	txn := begin(t, r, pipeline.SourceSMTP, "ok@b.test")
	if _, err := txn.Commit(context.Background(), message(t, txn, "late"), CommitOptions{}); pipeline.Reply(err).Code != 421 {
		t.Fatalf("commit after Close: %v", err)
	}
	if got := queued(t, sp); len(got) != 0 {
		t.Fatalf("spooled %v after Close", got)
	}
}

// TestSwapClosesOldPipelineAfterInFlight: a transaction that began on the
// old pipeline finishes on it; the old pipeline is closed when it ends,
// and new transactions run on the new one.
func TestSwapClosesOldPipelineAfterInFlight(t *testing.T) {
	r, _ := setup(t)
	var closed atomic.Int32
	old := NewPipeline(r.Chain(), func() { closed.Add(1) })
	r.Swap(old)
	txn := begin(t, r, pipeline.SourceSMTP, "ok@b.test")
	next, err := pipeline.Compile([]pipeline.Stage{stampStage{}}, pipeline.ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r.Swap(NewPipeline(next, nil))
	if closed.Load() != 0 {
		t.Fatal("the old pipeline was closed under a transaction in flight")
	}
	if txn.Chain() != old.Chain || r.Chain() != next {
		t.Fatal("the transaction moved pipelines, or the relay did not")
	}
	if _, err := txn.Commit(context.Background(), message(t, txn, "x"), CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	if closed.Load() != 1 {
		t.Fatalf("old pipeline closed %d times after its last transaction, want 1", closed.Load())
	}
	// A pipeline with nothing in flight closes at once, once.
	var c2 atomic.Int32
	p2 := NewPipeline(next, func() { c2.Add(1) })
	r.Swap(p2)
	r.Swap(NewPipeline(next, nil))
	ClosePipeline(p2)
	if c2.Load() != 1 {
		t.Fatalf("closed %d times", c2.Load())
	}
}
