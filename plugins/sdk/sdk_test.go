package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluice-mta/sluice/pipeline"
	stagev1 "github.com/sluice-mta/sluice/plugins/proto/stage/v1"
)

type rcptOnly struct{ err error }

func (r *rcptOnly) Name() string { return "r" }

func (r *rcptOnly) Configure(stage string, cfg json.RawMessage) error {
	if string(cfg) != "{}" {
		return errors.New("want {}")
	}
	return nil
}

func (r *rcptOnly) OnRcpt(ctx context.Context, txn *pipeline.Txn, rc *pipeline.Recipient) (pipeline.Verdict, error) {
	return pipeline.Verdict{}, r.err
}

func TestServer(t *testing.T) {
	st := &rcptOnly{}
	srv := NewServer(st)
	ctx := context.Background()
	// An absent config is {}; anything the stage refuses is InvalidArgument.
	if _, err := srv.Configure(ctx, &stagev1.ConfigureRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Configure(ctx, &stagev1.ConfigureRequest{ConfigJson: []byte(`{"a":1}`)}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad config: %v", err)
	}
	d, _ := srv.Describe(ctx, &stagev1.DescribeRequest{})
	if len(d.Hooks) != 1 || d.Hooks[0] != stagev1.Hook_HOOK_ON_RCPT || d.Body != stagev1.BodyNeed_BODY_NEED_FULL || d.ProtocolMinor != ProtocolMinor {
		t.Fatalf("describe: %v", d)
	}
	if _, err := srv.OnMessage(ctx, &stagev1.MessageRequest{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("unimplemented hook: %v", err)
	}
	req := &stagev1.RcptRequest{Txn: &stagev1.Txn{}, Rcpt: &stagev1.Recipient{Address: "a@b.example"}}
	st.err = errors.New("database down")
	if _, err := srv.OnRcpt(ctx, req); status.Code(err) != codes.Unknown || status.Convert(err).Message() != "database down" {
		t.Fatalf("hook error: %v", err)
	}
	// A *pipeline.Error is the stage's chosen reply.
	st.err = pipeline.Errorf(452, pipeline.EnhancedCode{4, 2, 2}, "mailbox full")
	v, err := srv.OnRcpt(ctx, req)
	if err != nil || v.Action != stagev1.Action_ACTION_TEMPFAIL || v.Code != 452 || v.Text != "mailbox full" {
		t.Fatalf("pipeline error: %v %v", v, err)
	}
}
