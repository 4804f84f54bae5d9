package plugin

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluice-mta/sluice/internal/plugin/conv"
	stagev1 "github.com/sluice-mta/sluice/plugins/proto/stage/v1"
)

// streamBodyMax is the largest message body sent over the Calls stream; a
// larger one goes as a unary call, so that it does not hold the stream's
// send lock and flow-control window while smaller calls wait behind it.
const streamBodyMax = 256 << 10

// errStreamDown: the instance's Calls stream is broken; the call goes as a
// unary RPC instead.
var errStreamDown = errors.New("plugin call stream is down")

// errMuxClosed: the instance is being stopped.
var errMuxClosed = errors.New("plugin call stream closed")

// expired is what a call's channel receives when the stage's deadline
// for it passed (see mux.sweep); compared by address.
var expired = &stagev1.CallResponse{}

// replyChans recycles the one-slot channels calls wait on. A channel goes
// back only once it is known to be empty and unreachable from the mux.
var replyChans = sync.Pool{New: func() any { return make(chan *stagev1.CallResponse, 1) }}

// mux carries one instance's hook calls over its Calls stream (protocol
// 1.1): any number of callers send a CallRequest each (under sendMu) and
// wait for the CallResponse with their id, which the receiving goroutine
// hands over. Once the stream breaks it stays broken; the instance's calls
// then go as unary RPCs until the instance is restarted (a new instance
// opens a new stream).
//
// The stage's per-call deadlines are kept by one timer per stream rather
// than a context.WithTimeout (a context and a runtime timer) per call:
// deadlines queues them in order, and the timer, armed for the earliest,
// expires the calls still waiting when it fires (sweep).
type mux struct {
	stream stagev1.Stage_CallsClient
	cancel context.CancelFunc
	log    *slog.Logger

	sendMu sync.Mutex // stream.Send is not safe for concurrent use

	mu      sync.Mutex
	next    uint64
	pending map[uint64]chan *stagev1.CallResponse
	err     error // non-nil once broken
	// deadlines: the calls with a stage deadline, earliest first; answered
	// calls stay until swept or compacted away (see addDeadline).
	deadlines []callDeadline
	timer     *time.Timer // runs sweep; nil until the first deadline
	armed     time.Time   // what timer is set for; zero when stopped
}

// callDeadline is one call's stage deadline in mux.deadlines.
type callDeadline struct {
	at time.Time
	id uint64
}

// openMux opens rpc's Calls stream and starts receiving on it.
func openMux(rpc stagev1.StageClient, log *slog.Logger) (*mux, error) {
	ctx, cancel := context.WithCancel(context.Background())
	st, err := rpc.Calls(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	m := &mux{stream: st, cancel: cancel, log: log, pending: map[uint64]chan *stagev1.CallResponse{}}
	go m.recv()
	return m, nil
}

// close ends the stream (and so the receiving goroutine).
func (m *mux) close() {
	m.cancel()
	m.fail(errMuxClosed)
}

func (m *mux) recv() {
	for {
		r, err := m.stream.Recv()
		if err != nil {
			m.fail(err)
			return
		}
		more := r.More // protocol 1.3: answers sent together
		r.More = nil
		m.deliver(r)
		for _, x := range more {
			m.deliver(x)
		}
	}
}

// deliver hands an answer to the call waiting for it; an answer no call
// waits for (its deadline passed, or an id never sent) is dropped.
func (m *mux) deliver(r *stagev1.CallResponse) {
	m.mu.Lock()
	ch := m.pending[r.Id]
	delete(m.pending, r.Id)
	m.mu.Unlock()
	if ch != nil {
		ch <- r
	}
}

// fail marks the stream broken and fails the calls waiting on it.
func (m *mux) fail(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return
	}
	m.err = err
	for id, ch := range m.pending {
		close(ch)
		delete(m.pending, id)
	}
	m.deadlines = nil
	if m.timer != nil {
		m.timer.Stop()
	}
	m.cancel()
	if !errors.Is(err, errMuxClosed) && status.Code(err) != codes.Canceled {
		m.log.Warn("plugin call stream ended; calls go as unary RPCs until the plugin restarts", "err", err)
	}
}

// brokenErr is what a call in flight gets when the stream breaks: the
// connection's own status when it is gone (Unavailable: the plugin exited
// and is restarted), else Aborted (the call is lost, the plugin lives on).
func (m *mux) brokenErr() error {
	m.mu.Lock()
	err := m.err
	m.mu.Unlock()
	if status.Code(err) == codes.Unavailable {
		return err
	}
	return status.Errorf(codes.Aborted, "plugin call stream ended during the call: %v", err)
}

// call sends req and waits for its answer, ctx's end or the deadline dl
// (zero: none but ctx's). errStreamDown means the stream was broken
// before the call was sent.
func (m *mux) call(ctx context.Context, dl time.Time, req *stagev1.CallRequest) (*stagev1.CallResponse, error) {
	if cdl, ok := ctx.Deadline(); ok && (dl.IsZero() || !cdl.After(dl)) {
		dl = time.Time{} // ctx ends first: its own timer does
		req.DeadlineUnixNano = cdl.UnixNano()
	} else if !dl.IsZero() {
		req.DeadlineUnixNano = dl.UnixNano()
	}
	ch := replyChans.Get().(chan *stagev1.CallResponse)
	m.mu.Lock()
	if m.err != nil {
		m.mu.Unlock()
		replyChans.Put(ch)
		return nil, errStreamDown
	}
	m.next++
	id := m.next
	m.pending[id] = ch
	if !dl.IsZero() {
		m.addDeadline(dl, id)
	}
	m.mu.Unlock()
	req.Id = id
	m.sendMu.Lock()
	err := m.stream.Send(req)
	m.sendMu.Unlock()
	if err != nil {
		m.forget(id)
		// Send reports io.EOF for a stream that ended; Recv has its cause.
		m.fail(err)
		return nil, m.brokenErr()
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return nil, m.brokenErr()
		}
		replyChans.Put(ch) // its one sender has sent
		if r == expired {
			m.sendCancel(id)
			return nil, status.FromContextError(context.DeadlineExceeded).Err()
		}
		return r, nil
	case <-ctx.Done():
		if m.forget(id) {
			replyChans.Put(ch) // no one will send on it now
			m.sendCancel(id)
		}
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// sendCancel tells the plugin that the call id was abandoned.
func (m *mux) sendCancel(id uint64) {
	m.sendMu.Lock()
	_ = m.stream.Send(&stagev1.CallRequest{Id: id, Cancel: true})
	m.sendMu.Unlock()
}

// addDeadline queues call id's deadline at and keeps the timer armed for
// the earliest one. The stage's deadlines are nearly always later than
// those queued before, so the insertion is at (or near) the end. Entries
// of answered calls are dropped when the timer sweeps them or, so that a
// long deadline cannot make the queue grow with the call rate, when they
// outnumber the calls waiting. m.mu is held.
func (m *mux) addDeadline(at time.Time, id uint64) {
	if len(m.deadlines) > 2*len(m.pending)+64 {
		m.deadlines = slices.DeleteFunc(m.deadlines, func(d callDeadline) bool { return m.pending[d.id] == nil })
	}
	i := len(m.deadlines)
	for i > 0 && m.deadlines[i-1].at.After(at) {
		i--
	}
	m.deadlines = slices.Insert(m.deadlines, i, callDeadline{at, id})
	if m.armed.IsZero() || at.Before(m.armed) {
		m.arm(at)
	}
}

// arm sets the timer for at. m.mu is held.
func (m *mux) arm(at time.Time) {
	m.armed = at
	if m.timer == nil {
		m.timer = time.AfterFunc(time.Until(at), m.sweep)
		return
	}
	m.timer.Reset(time.Until(at))
}

// sweep runs when the timer fires: every call still waiting whose
// deadline has passed gets expired; the timer is re-armed for the next
// deadline.
func (m *mux) sweep() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.armed = time.Time{}
	now := time.Now()
	n := 0
	for ; n < len(m.deadlines) && !m.deadlines[n].at.After(now); n++ {
		id := m.deadlines[n].id
		if ch := m.pending[id]; ch != nil {
			delete(m.pending, id)
			ch <- expired // the one send: the call's entry is gone
		}
	}
	m.deadlines = slices.Delete(m.deadlines, 0, n)
	if len(m.deadlines) > 0 && m.err == nil {
		m.arm(m.deadlines[0].at)
	}
}

// forget drops a pending call; false when it was already answered or
// failed.
func (m *mux) forget(id uint64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.pending[id]
	delete(m.pending, id)
	return ok
}

// callUnary makes req as the matching unary RPC.
func callUnary(ctx context.Context, rpc stagev1.StageClient, req *stagev1.CallRequest) (*stagev1.CallResponse, error) {
	return conv.Call(ctx, unary{rpc}, req)
}

// unary is a plugin's client with the hook methods' server signatures
// (conv.Hooks), for conv.Call.
type unary struct{ c stagev1.StageClient }

func (u unary) OnConnect(ctx context.Context, r *stagev1.ConnectRequest) (*stagev1.Verdict, error) {
	return u.c.OnConnect(ctx, r)
}

func (u unary) OnHelo(ctx context.Context, r *stagev1.HeloRequest) (*stagev1.Verdict, error) {
	return u.c.OnHelo(ctx, r)
}

func (u unary) OnMail(ctx context.Context, r *stagev1.MailRequest) (*stagev1.Verdict, error) {
	return u.c.OnMail(ctx, r)
}

func (u unary) OnRcpt(ctx context.Context, r *stagev1.RcptRequest) (*stagev1.Verdict, error) {
	return u.c.OnRcpt(ctx, r)
}

func (u unary) OnMessage(ctx context.Context, r *stagev1.MessageRequest) (*stagev1.Verdict, error) {
	return u.c.OnMessage(ctx, r)
}

func (u unary) OnRoute(ctx context.Context, r *stagev1.RouteRequest) (*stagev1.Verdict, error) {
	return u.c.OnRoute(ctx, r)
}

func (u unary) OnEvent(ctx context.Context, r *stagev1.EventRequest) (*stagev1.EventResponse, error) {
	return u.c.OnEvent(ctx, r)
}

// bigBody reports whether req carries a body too large for the stream.
func bigBody(req *stagev1.CallRequest) bool {
	var msg *stagev1.Message
	switch c := req.Call.(type) {
	case *stagev1.CallRequest_Message:
		msg = c.Message.GetMessage()
	case *stagev1.CallRequest_Route:
		msg = c.Route.GetMessage()
	}
	return len(msg.GetBody()) > streamBodyMax
}

// call makes one hook call on the instance: over its Calls stream when it
// has one that works and the message is not large, else as a unary RPC.
// A failure is a gRPC status error, as from a unary call.
// dl is the stage's deadline for the call (zero: none but ctx's).
func (inst *instance) call(ctx context.Context, dl time.Time, req *stagev1.CallRequest) (*stagev1.CallResponse, error) {
	req, err := inst.forInstance(req)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if m := inst.mux; m != nil && !bigBody(req) {
		r, err := m.call(ctx, dl, req)
		if err != errStreamDown {
			if err != nil {
				return nil, err
			}
			if e := r.GetError(); e != nil {
				code := codes.Code(e.Code)
				if code == codes.OK {
					code = codes.Unknown
				}
				return nil, status.Error(code, e.Message)
			}
			return r, nil
		}
	}
	if !dl.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl)
		defer cancel()
	}
	return callUnary(ctx, inst.rpc, req)
}
