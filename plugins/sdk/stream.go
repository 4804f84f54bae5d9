package sdk

import (
	"context"
	"runtime"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluice-mta/sluice/internal/plugin/conv"
	stagev1 "github.com/sluice-mta/sluice/plugins/proto/stage/v1"
)

// maxWorkers bounds the workers of one Calls stream. Sluice sends at most
// the stage's max_in_flight calls at once (64 by default), so the workers
// grow to the concurrency the stage sees. A goroutine per call starts on a
// small stack and grows it (a copy) during the call: 5% of a small call's
// CPU with 8 calls in flight.
const maxWorkers = 256

// Calls serves hook calls over one bidirectional stream (protocol 1.1):
// each CallRequest runs concurrently with the others (one after the other
// on the receiving goroutine with WithInlineCalls), on one of the
// stream's workers (long-lived goroutines, whose grown stacks are reused:
// a new one starts when all are busy, up to maxWorkers, past which a call
// gets a goroutine of its own), with the request's deadline,
// and its CallResponse is sent when it returns, in completion order
// (several in one message when Sluice set batch_answers, protocol 1.3:
// see answerBatcher). A
// cancel request cancels the named call's context. Calls returns when
// Sluice closes the stream; calls still running then are cancelled and
// their answers dropped.
func (s *server) Calls(stream stagev1.Stage_CallsServer) error {
	if s.noStream {
		return status.Error(codes.Unimplemented, "this plugin serves unary calls only (sdk.WithoutStreaming)")
	}
	base := stream.Context()
	var (
		sendMu  sync.Mutex // stream.Send is not safe for concurrent use
		done    bool       // guarded by sendMu: Calls returned, Send no more
		mu      sync.Mutex
		cancels = map[uint64]func(){}
	)
	work := make(chan func())
	defer close(work)
	workers := 0 // only this goroutine starts them
	worker := func(f func()) {
		for ; f != nil; f = <-work {
			f()
		}
	}
	send := func(resp *stagev1.CallResponse) {
		sendMu.Lock()
		defer sendMu.Unlock()
		if !done {
			_ = stream.Send(resp) // an error ends the stream: Recv fails next
		}
	}
	answer := send
	if s.batch.Load() {
		b := newAnswerBatcher(send)
		defer b.close()
		answer = b.add
	}
	defer func() {
		sendMu.Lock()
		done = true
		sendMu.Unlock()
		mu.Lock()
		for _, c := range cancels {
			c()
		}
		mu.Unlock()
	}()
	for {
		req, err := stream.Recv()
		if err != nil {
			return nil // Sluice closed the stream (or the connection)
		}
		if req.Cancel {
			mu.Lock()
			if c := cancels[req.Id]; c != nil {
				c()
			}
			mu.Unlock()
			continue
		}
		var dl time.Time
		if req.DeadlineUnixNano != 0 {
			dl = time.Unix(0, req.DeadlineUnixNano)
		}
		ctx := newCallCtx(base, dl)
		if s.inline { // WithInlineCalls: no worker, no cancel entry
			var resp *stagev1.CallResponse
			if err := ctx.Err(); err != nil {
				// Its deadline passed while it waited behind the hooks
				// before it: answered as a hook returning ctx.Err() would
				// be, without running it. Sluice has applied on_error at
				// the deadline already and drops this answer.
				resp = errAnswer(req.Id, status.FromContextError(err).Err())
			} else {
				resp = s.dispatch(ctx, req)
			}
			ctx.cancel()
			answer(resp)
			continue
		}
		cancel := ctx.cancel
		mu.Lock()
		cancels[req.Id] = cancel
		mu.Unlock()
		run := func() {
			resp := s.dispatch(ctx, req)
			mu.Lock()
			delete(cancels, req.Id)
			mu.Unlock()
			cancel()
			answer(resp)
		}
		select {
		case work <- run:
		default:
			if workers < maxWorkers {
				workers++
				go worker(run)
			} else {
				go run()
			}
		}
	}
}

// maxBatch bounds the answers sent in one CallResponse.
const maxBatch = 64

// answerBatcher sends the answers of one Calls stream when Sluice reads
// CallResponse.more (protocol 1.3): the answers that complete while one
// is being sent go together in the next CallResponse, the first carrying
// the others in more, instead of one gRPC message each. It never waits
// for an answer to come: an answer that finds the sender idle is sent at
// once, alone.
type answerBatcher struct {
	send func(*stagev1.CallResponse)

	mu     sync.Mutex
	queue  []*stagev1.CallResponse
	closed bool
	kick   chan struct{} // one slot: there are answers to send
}

func newAnswerBatcher(send func(*stagev1.CallResponse)) *answerBatcher {
	b := &answerBatcher{send: send, kick: make(chan struct{}, 1)}
	go b.run()
	return b
}

// add queues an answer; after close it is dropped (the stream is over).
func (b *answerBatcher) add(r *stagev1.CallResponse) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.queue = append(b.queue, r)
	select {
	case b.kick <- struct{}{}:
	default: // the sender is already due to take the queue
	}
}

// close stops the sender.
func (b *answerBatcher) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed {
		b.closed = true
		close(b.kick)
	}
}

func (b *answerBatcher) run() {
	for range b.kick {
		// Let the goroutines that are ready to run (other calls about to
		// answer, the stream's reader) go first, so that their answers
		// join this message: without this, on one processor the sender
		// runs right after each answer and sends it alone.
		runtime.Gosched()
		b.mu.Lock()
		q := b.queue
		b.queue = nil
		b.mu.Unlock()
		for len(q) > 0 {
			n := min(len(q), maxBatch)
			first := q[0]
			first.More = q[1:n] // Send encodes before it returns
			b.send(first)
			first.More = nil
			q = q[n:]
		}
	}
}

// dispatch runs one call of the stream through the unary methods, so both
// paths behave the same; a failure is answered as a CallError.
func (s *server) dispatch(ctx context.Context, req *stagev1.CallRequest) *stagev1.CallResponse {
	r, err := conv.Call(ctx, s, req)
	if err != nil {
		return errAnswer(req.Id, err)
	}
	r.Id = req.Id
	return r
}

// errAnswer is the answer to call id that failed with err (a gRPC status
// or a plain error).
func errAnswer(id uint64, err error) *stagev1.CallResponse {
	st := status.Convert(err)
	return &stagev1.CallResponse{Id: id, Result: &stagev1.CallResponse_Error{
		Error: &stagev1.CallError{Code: int32(st.Code()), Message: st.Message()}}}
}
