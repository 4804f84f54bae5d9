package sdk

import (
	"context"
	"net"
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
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	stagev1.RegisterStageServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient("passthrough:///buf", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return lis.Dial() }))
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
