package sdk

import (
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"

	// The "proto" codec, which Codec falls back to, registers itself here.
	_ "google.golang.org/grpc/encoding/proto"
)

// vtMessage is a message with the reflection-free methods that
// protoc-gen-go-vtproto (planetscale/vtprotobuf) generates: every message
// of the plugin protocol (`make proto`).
type vtMessage interface {
	SizeVT() int
	MarshalToSizedBufferVT([]byte) (int, error)
	UnmarshalVT([]byte) error
}

// Codec is the gRPC codec of the connection between Sluice and a plugin,
// on both sides: the protocol's messages are encoded and decoded with
// their generated vtproto methods instead of protobuf's reflection (about
// a third of a small call's encoding and decoding CPU, and fewer
// allocations); any other message (go-plugin's own services) goes to
// gRPC's standard "proto" codec. The bytes on the wire are the same
// protobuf encoding, under the same name, so a peer that uses the
// standard codec (an older SDK, another language) sees no difference.
//
// Unmarshal expects a new, empty message, as gRPC always passes (the
// vtproto methods merge into what is there rather than reset it).
// Safe for concurrent use.
var Codec encoding.CodecV2 = codec{}

type codec struct{}

func (codec) Name() string { return "proto" }

func standard() encoding.CodecV2 { return encoding.GetCodecV2("proto") }

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(vtMessage)
	if !ok {
		return standard().Marshal(v)
	}
	size := m.SizeVT()
	if mem.IsBelowBufferPoolingThreshold(size) {
		buf := make([]byte, size)
		if _, err := m.MarshalToSizedBufferVT(buf); err != nil {
			return nil, fmt.Errorf("marshal %T: %w", v, err)
		}
		return mem.BufferSlice{mem.SliceBuffer(buf)}, nil
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(size)
	if _, err := m.MarshalToSizedBufferVT(*buf); err != nil {
		pool.Put(buf)
		return nil, fmt.Errorf("marshal %T: %w", v, err)
	}
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
}

func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(vtMessage)
	if !ok {
		return standard().Unmarshal(data, v)
	}
	// The message is copied once into a new buffer that the decoded
	// message's strings and bytes then point into (UnmarshalVTUnsafe),
	// instead of into a pooled buffer from which UnmarshalVT copies each
	// string and byte field apart: one allocation for a request's dozen.
	// The buffer is never written again and lives as long as something
	// points into it (a message's body, a header kept by the hook).
	if u, ok := v.(vtUnsafeMessage); ok {
		if err := u.UnmarshalVTUnsafe(data.Materialize()); err != nil {
			return fmt.Errorf("unmarshal %T: %w", v, err)
		}
		return nil
	}
	// UnmarshalVT copies what it keeps (bytes and strings), so the
	// buffer can go back to the pool.
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	if err := m.UnmarshalVT(buf.ReadOnlyData()); err != nil {
		return fmt.Errorf("unmarshal %T: %w", v, err)
	}
	return nil
}

// vtUnsafeMessage is a vtMessage whose decoder can point into its input
// instead of copying from it (vtproto's unmarshal_unsafe feature, which
// `make proto` generates for every message of the protocol).
type vtUnsafeMessage interface {
	UnmarshalVTUnsafe([]byte) error
}

// DialOptions are the gRPC options Sluice dials a plugin with (the SDK's
// Serve sets the matching server options): the message size limit
// (MaxMessageSize), fixed flow-control windows (StreamWindow, ConnWindow)
// and Codec.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageSize), grpc.MaxCallSendMsgSize(MaxMessageSize),
			grpc.ForceCodecV2(Codec)),
		grpc.WithInitialWindowSize(StreamWindow), grpc.WithInitialConnWindowSize(ConnWindow),
	}
}

// serverOptions are DialOptions' counterparts on the plugin's side.
func serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxMessageSize), grpc.MaxSendMsgSize(MaxMessageSize),
		grpc.InitialWindowSize(StreamWindow), grpc.InitialConnWindowSize(ConnWindow),
		grpc.ForceServerCodecV2(Codec),
	}
}
