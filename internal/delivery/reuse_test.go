package delivery_test

import (
	"context"
	"io"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// BenchmarkDeliverReused2KB is the queue's use of a cached session: Usable
// (the liveness probe) then Deliver, under a cancellable context, 2 KB
// messages, pipelined (issue 21). The sink runs in the same process, so
// allocations are both sides'.
func BenchmarkDeliverReused2KB(b *testing.B) {
	sk := newSink(b, testutil.SinkOptions{})
	sk.OnData = func(_ *smtp.Conn, r io.Reader) error {
		_, err := io.Copy(io.Discard, r)
		return err
	}
	e := newEnv(b, sk.Port)
	e.DNS.AddA("example.test", sk.IP)
	s := dial(b, e, pipeline.MX(), "example.test")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	env := &delivery.Envelope{From: "app@sender.test", Rcpts: []delivery.Rcpt{{Addr: "bob@example.test"}}}
	data := message(2048)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if !s.Usable() {
			b.Fatal("session not usable")
		}
		res, err := s.Deliver(ctx, env, data)
		if err != nil || res[0].Err != nil {
			b.Fatalf("Deliver = %v, %v", res, err)
		}
	}
}

// The watch on the delivery context is kept across Deliver calls: a
// context cancelled between two messages fails the next one without
// sending it and leaves the session unusable; a Deliver under another
// context moves the watch, so cancelling the old one no longer matters.
func TestDeliverWatchAcrossMessages(t *testing.T) {
	sk := newSink(t, testutil.SinkOptions{})
	e := newEnv(t, sk.Port)
	e.DNS.AddA("example.test", sk.IP)
	env := &delivery.Envelope{From: "app@sender.test", Rcpts: []delivery.Rcpt{{Addr: "bob@example.test"}}}
	data := message(512)

	s := dial(t, e, pipeline.MX(), "example.test")
	defer s.Close()
	ctx1, cancel1 := context.WithCancel(context.Background())
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	for _, ctx := range []context.Context{ctx1, ctx1, ctx2} {
		if !s.Usable() {
			t.Fatal("session not usable")
		}
		if res, err := s.Deliver(ctx, env, data); err != nil || res[0].Err != nil {
			t.Fatalf("Deliver = %v, %v", res, err)
		}
	}
	cancel1() // no longer watched
	if !s.Usable() {
		t.Fatal("cancelling a context no longer in use broke the session")
	}
	if res, err := s.Deliver(ctx2, env, data); err != nil || res[0].Err != nil {
		t.Fatalf("Deliver after cancelling the old context = %v, %v", res, err)
	}
	got := len(sk.Messages())
	cancel2()
	res, err := s.Deliver(ctx2, env, data)
	if err == nil || !pipeline.IsTemporary(err) || res[0].Err == nil {
		t.Fatalf("Deliver under a cancelled context = %v, %v; want a temporary failure", res, err)
	}
	if n := len(sk.Messages()); n != got {
		t.Fatalf("sink has %d messages, had %d: a cancelled delivery was sent", n, got)
	}
}
