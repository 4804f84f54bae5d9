package plugin

import (
	"bytes"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/internal/plugin/conv"
	"github.com/sluice-mta/sluice/pipeline"
	stagev1 "github.com/sluice-mta/sluice/plugins/proto/stage/v1"
)

// blockBufs holds the buffers the header blocks of calls are written into
// (protocol 1.2). A buffer returns once its call is answered: gRPC
// encodes the request before Send (or a unary call) returns.
var blockBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledBlock: a header block buffer larger than this (a message with
// a huge header) is left to the collector rather than kept in the pool.
const maxPooledBlock = 64 << 10

// message converts msg for an on_message or on_route call: with the
// header as one block when the plugin reads blocks (its Describe at start
// said header_block), else one entry per field. done gives the block's
// buffer back; call it once the call has returned.
func (s *Stage) message(msg *pipeline.Message) (m *stagev1.Message, done func(), err error) {
	if !s.g.desc.HeaderBlock {
		return conv.Message(msg, s.g.desc.Body), func() {}, nil
	}
	buf := blockBufs.Get().(*bytes.Buffer)
	done = func() {
		if buf.Cap() <= maxPooledBlock {
			blockBufs.Put(buf)
		}
	}
	if m, err = conv.MessageBlock(msg, s.g.desc.Body, buf); err != nil {
		done()
		return nil, nil, err
	}
	return m, done, nil
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
