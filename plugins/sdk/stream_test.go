package sdk

import (
	"context"
	"net"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/sluice-mta/sluice/pipeline"
	stagev1 "github.com/sluice-mta/sluice/plugins/proto/stage/v1"
)

// blocker's on_message waits for its context when the subject is "block".
type blocker struct{}

func (blocker) Name() string { return "b" }

func (blocker) OnMessage(ctx context.Context, msg *pipeline.Message) (pipeline.Verdict, error) {
	if msg.Header.Get("Subject") == "block" {
		<-ctx.Done()
		return pipeline.Verdict{}, ctx.Err()
	}
	var v pipeline.Verdict
	v.Edits.AddHeader("X-Seen", msg.Header.Get("Subject"))
	return v, nil
}

// dial serves srv over an in-memory gRPC connection.
func dial(t *testing.T, srv stagev1.StageServer) stagev1.StageClient {
	return dialWith(t, srv, nil, nil)
}

// dialWith is dial with server and dial options.
func dialWith(t *testing.T, srv stagev1.StageServer, sopts []grpc.ServerOption, dopts []grpc.DialOption) stagev1.StageClient {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer(sopts...)
	stagev1.RegisterStageServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient("passthrough:///buf", append(dopts, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return lis.Dial() }))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return stagev1.NewStageClient(cc)
}

func msgCall(id uint64, subject string) *stagev1.CallRequest {
	return &stagev1.CallRequest{Id: id, Call: &stagev1.CallRequest_Message{Message: &stagev1.MessageRequest{
		Message: &stagev1.Message{Txn: &stagev1.Txn{}, HasHeader: true,
			Header: []*stagev1.HeaderField{{Name: "Subject", Value: subject, Raw: []byte("Subject: " + subject)}}}}}}
}

// TestCallsStream: calls on the stream run concurrently and are answered
// by id in completion order; a cancel request ends the named call; a
// request's deadline reaches the hook.
func TestCallsStream(t *testing.T) {
	c := dial(t, NewServer(blocker{}))
	d, err := c.Describe(context.Background(), &stagev1.DescribeRequest{})
	if err != nil || !d.Streaming {
		t.Fatalf("describe: %v %v", d, err)
	}
	st, err := c.Calls(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*stagev1.CallRequest{msgCall(7, "block"), msgCall(8, "hello")} {
		if err := st.Send(r); err != nil {
			t.Fatal(err)
		}
	}
	// The blocked call 7 does not hold up call 8.
	r, err := st.Recv()
	if err != nil || r.Id != 8 || len(r.GetVerdict().GetEdits().GetHeaders()) != 1 || r.GetVerdict().Edits.Headers[0].Value != "hello" {
		t.Fatalf("first answer: %v %v", r, err)
	}
	if err := st.Send(&stagev1.CallRequest{Id: 7, Cancel: true}); err != nil {
		t.Fatal(err)
	}
	r, err = st.Recv()
	if err != nil || r.Id != 7 || r.GetError() == nil {
		t.Fatalf("cancelled call: %v %v", r, err)
	}
	// A deadline in the request ends a blocked call as DeadlineExceeded.
	dl := msgCall(9, "block")
	dl.DeadlineUnixNano = time.Now().Add(50 * time.Millisecond).UnixNano()
	if err := st.Send(dl); err != nil {
		t.Fatal(err)
	}
	r, err = st.Recv()
	if err != nil || r.Id != 9 || r.GetError() == nil {
		t.Fatalf("call past its deadline: %v %v", r, err)
	}
	// A hook the stage lacks is an error answer, as on the unary path.
	if err := st.Send(&stagev1.CallRequest{Id: 10, Call: &stagev1.CallRequest_Helo{Helo: &stagev1.HeloRequest{}}}); err != nil {
		t.Fatal(err)
	}
	if r, err = st.Recv(); err != nil || r.Id != 10 || codes.Code(r.GetError().GetCode()) != codes.Unimplemented {
		t.Fatalf("unimplemented hook: %v %v", r, err)
	}
}

// TestWithoutStreaming: the option turns the stream off and says so.
func TestWithoutStreaming(t *testing.T) {
	c := dial(t, NewServer(blocker{}, WithoutStreaming()))
	d, err := c.Describe(context.Background(), &stagev1.DescribeRequest{})
	if err != nil || d.Streaming {
		t.Fatalf("describe: %v %v", d, err)
	}
	st, err := c.Calls(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); status.Code(err) != codes.Unimplemented {
		t.Fatalf("Calls without streaming: %v", err)
	}
	if v, err := c.OnMessage(context.Background(), msgCall(1, "x").GetMessage()); err != nil || len(v.GetEdits().GetHeaders()) != 1 {
		t.Fatalf("unary call: %v %v", v, err)
	}
}

// TestAnswerBatcher: answers that complete while one is being sent go
// together in the next CallResponse (the first carrying the others in
// more), in completion order; an answer that finds the sender idle goes
// alone; after close, answers are dropped.
func TestAnswerBatcher(t *testing.T) {
	sent := make(chan []uint64, 10)
	release := make(chan struct{})
	var sends atomic.Int32
	b := newAnswerBatcher(func(r *stagev1.CallResponse) {
		if sends.Add(1) == 1 {
			<-release // hold the first send while more answers complete
		}
		ids := []uint64{r.Id}
		for _, x := range r.More {
			ids = append(ids, x.Id)
		}
		sent <- ids
	})
	b.add(&stagev1.CallResponse{Id: 1})
	for sends.Load() == 0 { // the sender has taken answer 1 and is sending it
		time.Sleep(time.Millisecond)
	}
	for id := uint64(2); id <= 4; id++ {
		b.add(&stagev1.CallResponse{Id: id})
	}
	close(release)
	if ids := <-sent; !slices.Equal(ids, []uint64{1}) {
		t.Fatalf("first message: answers %v, want [1]", ids)
	}
	if ids := <-sent; !slices.Equal(ids, []uint64{2, 3, 4}) {
		t.Fatalf("second message: answers %v, want [2 3 4] in one", ids)
	}
	b.close()
	b.add(&stagev1.CallResponse{Id: 99})
	b.close()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.queue) != 0 {
		t.Fatal("an answer was queued after close")
	}
}

// TestCallsStreamBatchAnswers: with batch_answers (protocol 1.3) every
// call is answered exactly once, in a message of its own or in another's
// more; without it (an older Sluice) no answer carries more.
func TestCallsStreamBatchAnswers(t *testing.T) {
	for _, batch := range []bool{true, false} {
		c := dial(t, NewServer(blocker{}))
		if _, err := c.Configure(context.Background(), &stagev1.ConfigureRequest{StageName: "b", BatchAnswers: batch}); err != nil {
			t.Fatal(err)
		}
		st, err := c.Calls(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		const n = 200
		for id := uint64(1); id <= n; id++ {
			if err := st.Send(msgCall(id, strconv.FormatUint(id, 10))); err != nil {
				t.Fatal(err)
			}
		}
		seen := map[uint64]bool{}
		for len(seen) < n {
			r, err := st.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if !batch && len(r.More) > 0 {
				t.Fatalf("answers batched without batch_answers: %d in one", 1+len(r.More))
			}
			more := r.More
			r.More = nil
			for _, a := range append([]*stagev1.CallResponse{r}, more...) {
				h := a.GetVerdict().GetEdits().GetHeaders()
				if seen[a.Id] || len(h) != 1 || h[0].Value != strconv.FormatUint(a.Id, 10) || len(a.More) != 0 {
					t.Fatalf("batch %v: answer %v (seen before: %v)", batch, a, seen[a.Id])
				}
				seen[a.Id] = true
			}
		}
	}
}

// TestInlineCalls: with WithInlineCalls every call on the stream is
// answered once, with and without batch_answers; the calls run one after
// the other, so a hook blocked until its deadline holds up the calls sent
// after it (and only until then), and the answers come in request order.
func TestInlineCalls(t *testing.T) {
	for _, batch := range []bool{true, false} {
		c := dial(t, NewServer(blocker{}, WithInlineCalls()))
		if _, err := c.Configure(context.Background(), &stagev1.ConfigureRequest{StageName: "b", BatchAnswers: batch}); err != nil {
			t.Fatal(err)
		}
		st, err := c.Calls(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		blocked := msgCall(1, "block")
		blocked.DeadlineUnixNano = time.Now().Add(50 * time.Millisecond).UnixNano()
		if err := st.Send(blocked); err != nil {
			t.Fatal(err)
		}
		const n = 100
		for id := uint64(2); id <= n; id++ {
			if err := st.Send(msgCall(id, strconv.FormatUint(id, 10))); err != nil {
				t.Fatal(err)
			}
		}
		var order []uint64
		for len(order) < n {
			r, err := st.Recv()
			if err != nil {
				t.Fatal(err)
			}
			more := r.More
			r.More = nil
			for _, a := range append([]*stagev1.CallResponse{r}, more...) {
				if a.Id == 1 {
					if a.GetError() == nil {
						t.Fatalf("blocked call: %v, want its deadline's error", a)
					}
				} else if h := a.GetVerdict().GetEdits().GetHeaders(); len(h) != 1 || h[0].Value != strconv.FormatUint(a.Id, 10) {
					t.Fatalf("answer %v", a)
				}
				order = append(order, a.Id)
			}
		}
		for i, id := range order {
			if id != uint64(i+1) {
				t.Fatalf("batch %v: answers in order %v, want 1..%d (run inline, one after the other)", batch, order, n)
			}
		}
	}
}

// gate's on_message waits for release when the subject is "wait" and
// records the subjects of the calls it ran.
type gate struct {
	release chan struct{}
	ran     chan string
}

func (gate) Name() string { return "g" }

func (g gate) OnMessage(ctx context.Context, msg *pipeline.Message) (pipeline.Verdict, error) {
	subj := msg.Header.Get("Subject")
	g.ran <- subj
	if subj == "wait" {
		<-g.release
	}
	return pipeline.Verdict{}, nil
}

// TestInlineSkipsExpiredCalls: with WithInlineCalls, calls queued behind a
// stalled hook whose deadlines passed meanwhile are answered
// DEADLINE_EXCEEDED without running their hook; a call without a deadline
// behind them still runs.
func TestInlineSkipsExpiredCalls(t *testing.T) {
	g := gate{release: make(chan struct{}), ran: make(chan string, 16)}
	c := dial(t, NewServer(g, WithInlineCalls()))
	st, err := c.Calls(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(msgCall(1, "wait")); err != nil {
		t.Fatal(err)
	}
	if got := <-g.ran; got != "wait" {
		t.Fatalf("first hook ran %q", got)
	}
	dl := time.Now().Add(time.Millisecond)
	for id := uint64(2); id <= 4; id++ {
		r := msgCall(id, "late"+strconv.FormatUint(id, 10))
		r.DeadlineUnixNano = dl.UnixNano()
		if err := st.Send(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Send(msgCall(5, "ontime")); err != nil {
		t.Fatal(err)
	}
	for time.Now().Before(dl.Add(time.Millisecond)) { // every deadline has passed
		time.Sleep(time.Millisecond)
	}
	close(g.release)
	got := map[uint64]*stagev1.CallResponse{}
	for len(got) < 5 {
		r, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range append([]*stagev1.CallResponse{r}, r.More...) {
			got[a.Id] = a
		}
	}
	for id := uint64(2); id <= 4; id++ {
		if code := codes.Code(got[id].GetError().GetCode()); code != codes.DeadlineExceeded {
			t.Errorf("call %d: %v, want DEADLINE_EXCEEDED", id, got[id])
		}
	}
	if got[1].GetVerdict() == nil || got[5].GetVerdict() == nil {
		t.Errorf("calls 1 and 5: %v, %v; want verdicts", got[1], got[5])
	}
	close(g.ran)
	var ran []string
	for s := range g.ran {
		ran = append(ran, s)
	}
	if !slices.Equal(ran, []string{"ontime"}) {
		t.Errorf("hooks run after the stalled one: %v, want only [ontime]", ran)
	}
}
