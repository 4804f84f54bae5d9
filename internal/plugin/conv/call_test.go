package conv

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	stagev1 "github.com/sluice-mta/sluice/plugins/proto/stage/v1"
)

// hooks answers each hook with a verdict naming it (Text).
type hooks struct{}

func said(text string) (*stagev1.Verdict, error) { return &stagev1.Verdict{Text: text}, nil }

func (hooks) OnConnect(context.Context, *stagev1.ConnectRequest) (*stagev1.Verdict, error) {
	return said("on_connect")
}
func (hooks) OnHelo(context.Context, *stagev1.HeloRequest) (*stagev1.Verdict, error) {
	return said("on_helo")
}
func (hooks) OnMail(context.Context, *stagev1.MailRequest) (*stagev1.Verdict, error) {
	return said("on_mail")
}
func (hooks) OnRcpt(context.Context, *stagev1.RcptRequest) (*stagev1.Verdict, error) {
	return said("on_rcpt")
}
func (hooks) OnMessage(context.Context, *stagev1.MessageRequest) (*stagev1.Verdict, error) {
	return said("on_message")
}
func (hooks) OnRoute(context.Context, *stagev1.RouteRequest) (*stagev1.Verdict, error) {
	return nil, status.Error(codes.NotFound, "no route")
}
func (hooks) OnEvent(context.Context, *stagev1.EventRequest) (*stagev1.EventResponse, error) {
	return &stagev1.EventResponse{}, nil
}

// Call makes each call of the stream as its hook method, passes a hook's
// error through, and refuses a call it does not know.
func TestCall(t *testing.T) {
	ctx := context.Background()
	for want, req := range map[string]*stagev1.CallRequest{
		"on_connect": {Id: 7, Call: &stagev1.CallRequest_Connect{Connect: &stagev1.ConnectRequest{}}},
		"on_helo":    {Id: 7, Call: &stagev1.CallRequest_Helo{Helo: &stagev1.HeloRequest{}}},
		"on_mail":    {Id: 7, Call: &stagev1.CallRequest_Mail{Mail: &stagev1.MailRequest{}}},
		"on_rcpt":    {Id: 7, Call: &stagev1.CallRequest_Rcpt{Rcpt: &stagev1.RcptRequest{}}},
		"on_message": {Id: 7, Call: &stagev1.CallRequest_Message{Message: &stagev1.MessageRequest{}}},
	} {
		r, err := Call(ctx, hooks{}, req)
		if err != nil || r.GetVerdict().GetText() != want || r.Id != 0 {
			t.Errorf("%s: %v %v", want, r, err)
		}
	}
	if _, err := Call(ctx, hooks{}, &stagev1.CallRequest{Call: &stagev1.CallRequest_Route{Route: &stagev1.RouteRequest{}}}); status.Code(err) != codes.NotFound {
		t.Errorf("on_route: the hook's error is lost: %v", err)
	}
	if r, err := Call(ctx, hooks{}, &stagev1.CallRequest{Call: &stagev1.CallRequest_Event{Event: &stagev1.EventRequest{}}}); err != nil || r.GetEvent() == nil {
		t.Errorf("on_event: %v %v", r, err)
	}
	if _, err := Call(ctx, hooks{}, &stagev1.CallRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("a call of no known kind: %v", err)
	}
}
