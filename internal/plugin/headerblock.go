package plugin

import (
	"bytes"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/internal/plugin/conv"
	"github.com/sluice-mta/sluice/pipeline"
	stagev1 "github.com/sluice-mta/sluice/plugins/proto/stage/v1"
)

// msgCall is the request of one on_message or on_route call, built in
// one pooled object: the header block's buffer (protocol 1.2) and the
// request's messages, instead of a buffer from a pool and seven
// allocations per call. It returns to the pool once its call is
// answered: gRPC encodes the request before Send (or a unary call)
// returns, and nothing keeps it after the call.
type msgCall struct {
	buf   bytes.Buffer
	parts conv.MessageParts
	req   stagev1.CallRequest
	msg   stagev1.CallRequest_Message
	mreq  stagev1.MessageRequest
}

var msgCalls = sync.Pool{New: func() any { return new(msgCall) }}

// maxPooledBlock: a call whose header block buffer grew larger than this
// (a message with a huge header) is left to the collector rather than
// kept in the pool.
const maxPooledBlock = 64 << 10

// release clears c (so that the pool holds no message, body or map) and
// returns it to the pool. Call it once the call has returned.
func (c *msgCall) release() {
	c.parts = conv.MessageParts{}
	c.req, c.msg, c.mreq = stagev1.CallRequest{}, stagev1.CallRequest_Message{}, stagev1.MessageRequest{}
	if c.buf.Cap() <= maxPooledBlock {
		c.buf.Reset()
		msgCalls.Put(c)
	}
}

// message converts msg for an on_message or on_route call: with the
// header as one block when the plugin reads blocks (its Describe at start
// said header_block), else one entry per field. Release c once the call
// has returned.
func (s *Stage) message(msg *pipeline.Message) (m *stagev1.Message, c *msgCall, err error) {
	c = msgCalls.Get().(*msgCall)
	if !s.g.desc.HeaderBlock {
		return conv.Message(msg, s.g.desc.Body), c, nil
	}
	if m, err = conv.MessageBlockTo(&c.parts, msg, s.g.desc.Body, &c.buf); err != nil {
		c.release()
		return nil, nil, err
	}
	return m, c, nil
}

// onMessage returns c's request for an on_message call of m.
func (c *msgCall) onMessage(m *stagev1.Message) *stagev1.CallRequest {
	c.mreq = stagev1.MessageRequest{Message: m}
	c.msg = stagev1.CallRequest_Message{Message: &c.mreq}
	c.req = stagev1.CallRequest{Call: &c.msg}
	return &c.req
}

// forInstance adapts req to an instance that does not read header blocks
// (a restart found an older build of the plugin than the stage started
// with): the block is sent as header fields instead, in a copy of the
// request, so the caller's request is left alone.
func (inst *instance) forInstance(req *stagev1.CallRequest) (*stagev1.CallRequest, error) {
	if inst.headerBlock {
		return req, nil
	}
	msg := callMessage(req)
	if msg == nil || *msg == nil || len((*msg).HeaderBlock) == 0 {
		return req, nil
	}
	fields, err := conv.HeaderFields((*msg).HeaderBlock)
	if err != nil {
		return nil, err
	}
	req = proto.CloneOf(req)
	msg = callMessage(req)
	(*msg).HeaderBlock, (*msg).Header = nil, fields
	return req, nil
}

// callMessage returns where req keeps its message, nil for a call that
// carries none.
func callMessage(req *stagev1.CallRequest) **stagev1.Message {
	switch c := req.Call.(type) {
	case *stagev1.CallRequest_Message:
		return &c.Message.Message
	case *stagev1.CallRequest_Route:
		return &c.Route.Message
	}
	return nil
}
