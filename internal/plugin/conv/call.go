package conv

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	stagev1 "github.com/sluice-mta/sluice/plugins/proto/stage/v1"
)

// Hooks is the hook RPCs of the Stage service with the server's
// signatures: what the SDK's server implements, and what the host adapts
// its client to for unary calls.
type Hooks interface {
	OnConnect(context.Context, *stagev1.ConnectRequest) (*stagev1.Verdict, error)
	OnHelo(context.Context, *stagev1.HeloRequest) (*stagev1.Verdict, error)
	OnMail(context.Context, *stagev1.MailRequest) (*stagev1.Verdict, error)
	OnRcpt(context.Context, *stagev1.RcptRequest) (*stagev1.Verdict, error)
	OnMessage(context.Context, *stagev1.MessageRequest) (*stagev1.Verdict, error)
	OnRoute(context.Context, *stagev1.RouteRequest) (*stagev1.Verdict, error)
	OnEvent(context.Context, *stagev1.EventRequest) (*stagev1.EventResponse, error)
}

// Call makes the hook call that req (a call of the Calls stream, protocol
// 1.1) carries as the matching method of h, and returns its answer as a
// CallResponse without an id: the verdict, or for on_event the event
// response. The error is h's, or UNIMPLEMENTED for a call of a newer
// protocol than this build knows. Both sides dispatch with it: the SDK for
// each call of the stream, the host for a call it sends as a unary RPC.
func Call(ctx context.Context, h Hooks, req *stagev1.CallRequest) (*stagev1.CallResponse, error) {
	var v *stagev1.Verdict
	var err error
	switch c := req.Call.(type) {
	case *stagev1.CallRequest_Connect:
		v, err = h.OnConnect(ctx, c.Connect)
	case *stagev1.CallRequest_Helo:
		v, err = h.OnHelo(ctx, c.Helo)
	case *stagev1.CallRequest_Mail:
		v, err = h.OnMail(ctx, c.Mail)
	case *stagev1.CallRequest_Rcpt:
		v, err = h.OnRcpt(ctx, c.Rcpt)
	case *stagev1.CallRequest_Message:
		v, err = h.OnMessage(ctx, c.Message)
	case *stagev1.CallRequest_Route:
		v, err = h.OnRoute(ctx, c.Route)
	case *stagev1.CallRequest_Event:
		e, err := h.OnEvent(ctx, c.Event)
		if err != nil {
			return nil, err
		}
		return &stagev1.CallResponse{Result: &stagev1.CallResponse_Event{Event: e}}, nil
	default:
		return nil, status.Errorf(codes.Unimplemented, "unknown call %T (built for an older protocol?)", req.Call)
	}
	if err != nil {
		return nil, err
	}
	return &stagev1.CallResponse{Result: &stagev1.CallResponse_Verdict{Verdict: v}}, nil
}
