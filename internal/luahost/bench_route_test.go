package luahost

import (
	"context"
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

// BenchmarkLuaOnRouteRelay is the benchmark relay's on_route
// (examples/bench/relay.lua: a relay route built per call) under a
// cancellable caller context, as an SMTP session's: the per-call deadline
// context then also watches the caller's (issue 21).
func BenchmarkLuaOnRouteRelay(b *testing.B) {
	st, _, _ := benchStage(b, `on_route = function(msg, rcpt)
    return sluice.route.relay { host = "127.0.0.1", port = 2602, tls = "none" }
  end`)
	h := st.(pipeline.RouteHook)
	msg := testMsg(b)
	r := rcpt(b, "bob@example.org")
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		v, err := h.OnRoute(ctx, msg, r)
		if err != nil || v.Route == nil {
			b.Fatal(v, err)
		}
	}
}

// BenchmarkLuaOnMessageSessionCtx is BenchmarkLuaOnMessageAddHeader under
// a cancellable caller context.
func BenchmarkLuaOnMessageSessionCtx(b *testing.B) {
	st, _, _ := benchStage(b, `on_message = function(msg)
    msg:add_header("X-Bench", "1")
  end`)
	h := st.(pipeline.MessageHook)
	msg := testMsg(b)
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := h.OnMessage(ctx, msg); err != nil {
			b.Fatal(err)
		}
		msg.Header.Del("X-Bench")
	}
}
