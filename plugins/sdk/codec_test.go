package sdk

import (
	"testing"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	stagev1 "github.com/sluice-mta/sluice/plugins/proto/stage/v1"
)

// TestCodecWireCompatible: Codec writes the bytes the standard codec
// writes and reads them back, for the protocol's messages (vtproto) and
// for others (go-plugin's services: the standard codec), small and above
// gRPC's buffer pooling threshold.
func TestCodecWireCompatible(t *testing.T) {
	std := encoding.GetCodecV2("proto")
	big := make([]byte, 64<<10)
	for i := range big {
		big[i] = byte(i)
	}
	for _, m := range []proto.Message{
		&stagev1.CallRequest{Id: 7, DeadlineUnixNano: 123, Call: &stagev1.CallRequest_Message{Message: &stagev1.MessageRequest{
			Message: &stagev1.Message{Txn: &stagev1.Txn{Id: "m1", Sender: "a@x.example", Meta: map[string]string{"k": "v"}},
				HasHeader: true, HeaderBlock: []byte("Subject: hi\r\n\r\n")}}}},
		&stagev1.CallRequest{Id: 8, Call: &stagev1.CallRequest_Message{Message: &stagev1.MessageRequest{
			Message: &stagev1.Message{HasBody: true, Body: big}}}},
		&stagev1.CallResponse{Id: 7, Result: &stagev1.CallResponse_Verdict{Verdict: &stagev1.Verdict{Action: stagev1.Action_ACTION_REJECT,
			Code: 554, Enhanced: []int32{5, 7, 1}, Edits: &stagev1.Edits{Headers: []*stagev1.HeaderEdit{{Op: "add", Name: "X-A", Value: "1"}}}}}},
		&grpc_health_v1.HealthCheckResponse{Status: grpc_health_v1.HealthCheckResponse_SERVING},
	} {
		ours, err := Codec.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		theirs, err := std.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		a, b := ours.Materialize(), theirs.Materialize()
		// Map order may differ between encoders; the decoded messages must not.
		back := m.ProtoReflect().New().Interface()
		if err := Codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, back); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(back, m) {
			t.Fatalf("%T: standard bytes decoded by Codec differ", m)
		}
		back = m.ProtoReflect().New().Interface()
		if err := std.Unmarshal(mem.BufferSlice{mem.SliceBuffer(a)}, back); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(back, m) || len(a) != len(b) {
			t.Fatalf("%T: Codec bytes (%d) decoded by the standard codec differ (%d)", m, len(a), len(b))
		}
		ours.Free()
		theirs.Free()
	}
}

// TestCodecUnmarshalOwnsItsStrings: what Codec decodes does not point into
// the buffer gRPC hands it (which goes back to gRPC's pool and is reused):
// overwriting that buffer after Unmarshal leaves the decoded message as it
// was, strings, bytes and the header block included.
func TestCodecUnmarshalOwnsItsStrings(t *testing.T) {
	m := &stagev1.CallRequest{Id: 9, Call: &stagev1.CallRequest_Message{Message: &stagev1.MessageRequest{
		Message: &stagev1.Message{Txn: &stagev1.Txn{Id: "m1", Sender: "a@x.example", Recipients: []*stagev1.Recipient{{Address: "b@y.example"}},
			Meta: map[string]string{"k": "v"}}, HasHeader: true, HeaderBlock: []byte("Subject: hi\r\n\r\n"), HasBody: true, Body: []byte("body\r\n")}}}}
	enc, err := Codec.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	wire := enc.Materialize()
	enc.Free()
	back := &stagev1.CallRequest{}
	if err := Codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire)}, back); err != nil {
		t.Fatal(err)
	}
	for i := range wire {
		wire[i] = 'X'
	}
	if !proto.Equal(back, m) {
		t.Fatalf("the decoded message changed with the buffer it was decoded from: %v", back)
	}
}
