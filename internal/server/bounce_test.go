package server

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/queue"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/pipeline"
)

type dsnRoute struct{ v pipeline.Verdict }

func (dsnRoute) Name() string { return "r" }
func (d dsnRoute) OnRoute(ctx context.Context, m *pipeline.Message, r *pipeline.Recipient) (pipeline.Verdict, error) {
	if m.Conn.Source != pipeline.SourceDSN {
		return pipeline.Verdict{}, nil
	}
	return d.v, nil
}

func TestBouncerRoutesThroughThePipeline(t *testing.T) {
	meta := &spool.Meta{ID: "01TESTMSG", Sender: "app@sender.test", Received: time.Now()}
	failed := []queue.Failure{{Recipient: "x@y.test", Reply: &pipeline.Response{Code: 550, Enhanced: "5.1.1", Text: "no"}}}
	orig := []byte("Subject: hi\r\n\r\nbody\r\n")
	for name, tc := range map[string]struct {
		v        pipeline.Verdict
		wantKind string
		wantErr  error
	}{
		"smarthost":        {pipeline.RouteVerdict(&pipeline.Route{Kind: pipeline.RouteRelay, Host: "smart.test"}), pipeline.RouteRelay, nil},
		"no stage decides": {pipeline.Verdict{}, pipeline.RouteMX, nil},
		"stage fails":      {pipeline.TempfailVerdict(451, pipeline.EnhancedCode{}, ""), pipeline.RouteMX, nil},
		"discarded":        {pipeline.DiscardVerdict("no backscatter"), "", queue.ErrNoBounce},
	} {
		t.Run(name, func(t *testing.T) {
			chain, err := pipeline.Compile([]pipeline.Stage{dsnRoute{tc.v}}, pipeline.ChainOptions{})
			if err != nil {
				t.Fatal(err)
			}
			b := &bouncer{chain: chain, hostname: "relay.test", log: slog.New(slog.DiscardHandler)}
			dsn, route, err := b.Bounce(context.Background(), meta, orig, failed)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr != nil {
				return
			}
			if route.Kind != tc.wantKind || !strings.Contains(string(dsn), "Final-Recipient: rfc822; x@y.test") {
				t.Fatalf("route %+v, dsn:\n%s", route, dsn)
			}
		})
	}
}
