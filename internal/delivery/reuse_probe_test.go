package delivery_test

import (
	"context"
	"os"
	"runtime/debug"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// Review of issue 21's cached-session changes (probe through the RawConn
// taken at dial, deadline cleared only when passed, watch kept across
// messages).

// A server that closes an idle cached connection (FIN, no 421) is seen by
// the probe, whatever deadline the last exchange left on the socket: one
// still ahead (the usual case) and one that has passed.
func TestUsableSeesServerClose(t *testing.T) {
	for _, tc := range []struct {
		name string
		cmd  time.Duration // the dialer's command timeout
		wait time.Duration // idle time before the probe, after the server closed
	}{
		{"deadline ahead", 5 * time.Second, 0},
		{"deadline passed", 50 * time.Millisecond, 150 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			closed := make(chan struct{})
			srv := newScripted(t, "127.0.0.2", 0, func(p *peer) {
				p.ehlo("PIPELINING")
				p.expect("MAIL FROM:")
				p.send("250 ok")
				p.expect("RCPT TO:")
				p.send("250 ok")
				p.expect("DATA")
				p.send("354 go")
				p.readData()
				p.send("250 queued")
				p.c.Close()
				close(closed)
			})
			s := dialTimeouts(t, srv.Port, tc.cmd)
			env := &delivery.Envelope{From: "app@sender.test", Rcpts: []delivery.Rcpt{{Addr: "bob@example.test"}}}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if res, err := s.Deliver(ctx, env, message(512)); err != nil || res[0].Err != nil {
				t.Fatalf("Deliver = %v, %v", res, err)
			}
			<-closed
			time.Sleep(tc.wait)
			// The FIN may take a moment to arrive on loopback: poll until
			// the probe sees it (a probe that never does fails by timeout).
			deadline := time.Now().Add(5 * time.Second)
			for s.Usable() {
				if time.Now().After(deadline) {
					t.Fatal("Usable still true 5 s after the server closed the connection")
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

// A session whose last exchange's deadline has passed while it sat idle is
// still usable (the probe clears the deadline) and delivers on the same
// connection.
func TestUsableAfterDeadlinePassed(t *testing.T) {
	sk := newSink(t, testutil.SinkOptions{})
	s := dialTimeouts(t, sk.Port, 50*time.Millisecond)
	env := &delivery.Envelope{From: "app@sender.test", Rcpts: []delivery.Rcpt{{Addr: "bob@example.test"}}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range 3 {
		if !s.Usable() {
			t.Fatalf("message %d: session not usable after its deadline passed while idle", i)
		}
		if res, err := s.Deliver(ctx, env, message(512)); err != nil || res[0].Err != nil {
			t.Fatalf("message %d: Deliver = %v, %v", i, res, err)
		}
		time.Sleep(120 * time.Millisecond) // past the 50 ms command deadline
	}
	if n := len(sk.Messages()); n != 3 {
		t.Fatalf("sink has %d messages, want 3", n)
	}
}

// Send under a per-call context that the caller cancels once Send has
// returned (context.WithTimeout + defer cancel, the usual Go idiom) leaves
// a healthy connection usable, as it was before the watch was kept across
// messages: the cancelled context is no longer in use.
func TestUsableAfterPerCallContextEnded(t *testing.T) {
	sk := newSink(t, testutil.SinkOptions{})
	s := dialTimeouts(t, sk.Port, 5*time.Second)
	for i := range 3 {
		if !s.Usable() {
			t.Fatalf("message %d: session not usable after the previous call's context was cancelled", i)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		perRcpt, err := s.Send(ctx, "app@sender.test", []string{"bob@example.test"}, message(256))
		cancel()
		// Let the context package's AfterFunc goroutine run (if the watch
		// is still registered, it sets a past deadline on the socket).
		time.Sleep(20 * time.Millisecond)
		if err != nil || perRcpt[0] != nil {
			t.Fatalf("message %d: Send = %v, %v", i, perRcpt, err)
		}
	}
	if n := len(sk.Messages()); n != 3 {
		t.Fatalf("sink has %d messages, want 3", n)
	}
}

// Usable (the queue's worker) and a cancel of the watched context (the
// queue stopping) at the same time: no race on the connection's deadline
// bookkeeping (run with -race), and a Deliver after the cancel sends
// nothing.
func TestUsableRacesCancel(t *testing.T) {
	sk := newSink(t, testutil.SinkOptions{})
	s := dialTimeouts(t, sk.Port, 5*time.Second)
	env := &delivery.Envelope{From: "app@sender.test", Rcpts: []delivery.Rcpt{{Addr: "bob@example.test"}}}
	ctx, cancel := context.WithCancel(context.Background())
	if res, err := s.Deliver(ctx, env, message(256)); err != nil || res[0].Err != nil {
		t.Fatalf("Deliver = %v, %v", res, err)
	}
	var wg sync.WaitGroup
	wg.Go(cancel)
	s.Usable()
	wg.Wait()
	s.Usable()
	if res, err := s.Deliver(ctx, env, message(256)); err == nil || !pipeline.IsTemporary(err) || res[0].Err == nil {
		t.Fatalf("Deliver under a cancelled context = %v, %v; want a temporary failure", res, err)
	}
	if n := len(sk.Messages()); n != 1 {
		t.Fatalf("sink has %d messages, want 1", n)
	}
}

// dialTimeouts dials example.test (127.0.0.2:port) with the given command
// and data timeouts.
func dialTimeouts(t *testing.T, port int, cmd time.Duration) *delivery.Session {
	t.Helper()
	e := newEnv(t, port)
	e.DNS.AddA("example.test", "127.0.0.2")
	r, err := dnsx.New(dnsx.Options{Server: e.DNS.Addr(), Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	e.D = delivery.NewDialer(config.Delivery{
		Hostname:       "sluice.test",
		Port:           port,
		ConnectTimeout: 2 * time.Second,
		CommandTimeout: cmd,
		DataTimeout:    cmd,
	}, r)
	return dial(t, e, pipeline.MX(), "example.test")
}

// Sessions that deliver, find their connection closed by the server (the
// probe) or their context cancelled, and are closed, leave no descriptor
// open (the RawConn taken at dial is the connection's own, not a dup).
func TestSessionsLeaveNoDescriptor(t *testing.T) {
	sk := newSink(t, testutil.SinkOptions{})
	env := &delivery.Envelope{From: "app@sender.test", Rcpts: []delivery.Rcpt{{Addr: "bob@example.test"}}}
	e := newEnv(t, sk.Port)
	e.DNS.AddA("example.test", sk.IP)
	// One session first: the resolver's and the sink's lasting descriptors.
	warm := dial(t, e, pipeline.MX(), "example.test")
	warm.Close()
	// GC off: a leaked connection is then not closed by its finalizer.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	before := openFDs(t)
	for i := range 30 {
		s, err := e.D.Dial(context.Background(), pipeline.MX(), "example.test")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		if res, err := s.Deliver(ctx, env, message(256)); err != nil || res[0].Err != nil {
			t.Fatalf("Deliver = %v, %v", res, err)
		}
		if i%2 == 0 {
			cancel() // the watch fires on an idle session
		}
		s.Usable()
		s.Close()
		cancel()
	}
	testutil.WaitForWithin(t, 10*time.Second, "the descriptors of closed sessions to be gone", func() bool {
		return openFDs(t) <= before
	})
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd:", err)
	}
	return len(ents)
}
