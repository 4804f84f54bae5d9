package plugin

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluice-mta/sluice/internal/plugin/conv"
	"github.com/sluice-mta/sluice/pipeline"
	stagev1 "github.com/sluice-mta/sluice/plugins/proto/stage/v1"
)

// messageCall is an on_message CallRequest for msg with its full body.
func messageCall(msg *pipeline.Message) *stagev1.CallRequest {
	return &stagev1.CallRequest{Call: &stagev1.CallRequest_Message{
		Message: &stagev1.MessageRequest{Message: conv.Message(msg, stagev1.BodyNeed_BODY_NEED_FULL)}}}
}

// TestStreamDeadlines: the Calls stream's one deadline timer. A call with
// a short deadline sent after one with a long deadline still expires (the
// timer is re-armed for the earlier one) and leaves the other waiting; the
// expired call's late answer is dropped; the queue of deadlines does not
// grow with the number of calls answered; calls after an expiry get their
// own answers (the reply channels are reused safely).
func TestStreamDeadlines(t *testing.T) {
	s, _ := start(t, "ok", Options{HealthInterval: time.Hour})
	m := s.g.slots[0].get().mux
	if m == nil {
		t.Fatal("no Calls stream")
	}
	dir := t.TempDir()
	long, short := filepath.Join(dir, "long"), filepath.Join(dir, "short")
	type result struct {
		r   *stagev1.CallResponse
		err error
	}
	longDone := make(chan result, 1)
	go func() {
		r, err := m.call(context.Background(), time.Now().Add(time.Hour), messageCall(waitMessage(t, long)))
		longDone <- result{r, err}
	}()
	waitFor(t, "the long call to reach the plugin", func() bool { _, err := os.Stat(long + ".started"); return err == nil })

	_, err := m.call(context.Background(), time.Now().Add(50*time.Millisecond), messageCall(waitMessage(t, short)))
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("short call: want DeadlineExceeded, got %v", err)
	}
	select {
	case r := <-longDone:
		t.Fatalf("the long call ended with the short one: %v %v", r.r, r.err)
	default:
	}
	if err := os.WriteFile(long, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if r := <-longDone; r.err != nil || r.r.GetVerdict() == nil {
		t.Fatalf("long call: %v %v", r.r, r.err)
	}
	// The short call's plugin side was cancelled or still waits; its
	// answer, if any, must not reach a later call.
	if err := os.WriteFile(short, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		req := messageCall(message(t, "x"))
		r, err := m.call(context.Background(), time.Now().Add(time.Hour), req)
		if err != nil || r.GetVerdict() == nil {
			t.Fatalf("call %d: %v %v", i, r, err)
		}
		if r.Id != req.Id {
			t.Fatalf("call %d got the answer of call %d", req.Id, r.Id)
		}
	}
	m.mu.Lock()
	queued, waiting, armed := len(m.deadlines), len(m.pending), !m.armed.IsZero()
	m.mu.Unlock()
	if queued > 2*waiting+65 {
		t.Fatalf("%d deadlines queued for %d calls waiting: answered calls are not dropped", queued, waiting)
	}
	if !armed {
		t.Fatal("deadlines queued but the timer is not armed")
	}
}

// TestStageDeadlineOverStream: a stage Timeout on the Calls stream ends a
// hung call with on_error's deadline reply, and the stage keeps serving.
func TestStageDeadlineOverStream(t *testing.T) {
	s, _ := start(t, "ok", Options{Timeout: 100 * time.Millisecond, HealthInterval: time.Hour})
	file := filepath.Join(t.TempDir(), "go")
	_, err := s.OnMessage(context.Background(), waitMessage(t, file))
	if r := pipeline.Reply(err); r.Code != 451 || r.Enhanced != (pipeline.EnhancedCode{4, 4, 5}) {
		t.Fatalf("hung call: want 451 4.4.5, got %v (%v)", r, err)
	}
	if n, ok := streamCalls(s); !ok || n != 1 {
		t.Fatalf("the call did not go over the stream: calls %d, stream up %v", n, ok)
	}
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	v, err := s.OnMessage(context.Background(), message(t, "x"))
	if err != nil || v.Action != pipeline.Continue {
		t.Fatalf("after the deadline: %v %v", v, err)
	}
}

// fakeCalls is a Calls stream whose requests go to sent and whose answers
// come from answers (a closed answers ends the stream).
type fakeCalls struct {
	stagev1.Stage_CallsClient // not called
	sent                      chan *stagev1.CallRequest
	answers                   chan *stagev1.CallResponse
}

func (f *fakeCalls) Send(r *stagev1.CallRequest) error { f.sent <- r; return nil }

func (f *fakeCalls) Recv() (*stagev1.CallResponse, error) {
	r, ok := <-f.answers
	if !ok {
		return nil, context.Canceled
	}
	return r, nil
}

// TestMuxAnswersTogether: answers that come in one CallResponse (protocol
// 1.3, CallResponse.more) each reach the call waiting for them; one for
// no call waiting is dropped.
func TestMuxAnswersTogether(t *testing.T) {
	f := &fakeCalls{sent: make(chan *stagev1.CallRequest, 8), answers: make(chan *stagev1.CallResponse)}
	m := &mux{stream: f, cancel: func() {}, log: slog.New(slog.DiscardHandler), pending: map[uint64]chan *stagev1.CallResponse{}}
	go m.recv()
	defer close(f.answers)
	type result struct {
		id  uint64
		r   *stagev1.CallResponse
		err error
	}
	results := make(chan result, 3)
	for range 3 {
		req := messageCall(message(t, "x"))
		go func() {
			r, err := m.call(context.Background(), time.Time{}, req)
			results <- result{req.Id, r, err}
		}()
	}
	for range 3 {
		<-f.sent
	}
	verdict := func(id uint64) *stagev1.CallResponse {
		return &stagev1.CallResponse{Id: id, Result: &stagev1.CallResponse_Verdict{Verdict: &stagev1.Verdict{Text: strconv.FormatUint(id, 10)}}}
	}
	first := verdict(2)
	first.More = []*stagev1.CallResponse{verdict(3), verdict(99), verdict(1)}
	f.answers <- first
	for range 3 {
		res := <-results
		if res.err != nil || res.r.Id != res.id || res.r.GetVerdict().GetText() != strconv.FormatUint(res.id, 10) || len(res.r.More) != 0 {
			t.Fatalf("call %d: %v %v", res.id, res.r, res.err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.pending) != 0 {
		t.Fatalf("%d calls still pending", len(m.pending))
	}
}
