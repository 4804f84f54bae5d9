package queue

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/spool"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestReusedConnectionClosedByServer (review of issue 21's cached-session
// probe): the next hop closes the connection (FIN, no 421) after each
// message while the queue's worker keeps it for the next one. The next
// message goes out on a new connection at its first attempt: not sent on
// the dead connection and deferred, and not lost. Real SMTP over
// loopback, real spool.
func TestReusedConnectionClosedByServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns atomic.Int32
	var mu sync.Mutex
	var got []string // RCPT lines, in order
	closed := make(chan struct{}, 8)
	var wg sync.WaitGroup
	defer func() { ln.Close(); wg.Wait() }()
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			wg.Go(func() {
				defer func() { c.Close(); closed <- struct{}{} }()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				r := bufio.NewReader(c)
				say := func(s string) { io.WriteString(c, s+"\r\n") }
				say("220 hop.test ESMTP")
				for {
					l, err := r.ReadString('\n')
					if err != nil {
						return
					}
					l = strings.TrimRight(l, "\r\n")
					switch u := strings.ToUpper(l); {
					case strings.HasPrefix(u, "EHLO"):
						say("250-hop.test")
						say("250 PIPELINING")
					case strings.HasPrefix(u, "MAIL"):
						say("250 ok")
					case strings.HasPrefix(u, "RCPT"):
						mu.Lock()
						got = append(got, l)
						mu.Unlock()
						say("250 ok")
					case u == "DATA":
						say("354 go")
						for {
							d, err := r.ReadString('\n')
							if err != nil {
								return
							}
							if d == ".\r\n" {
								break
							}
						}
						say("250 queued")
						return // close after one message, without a word
					case u == "QUIT":
						say("221 bye")
						return
					default:
						say("500 what")
					}
				}
			})
		}
	})
	port := ln.Addr().(*net.TCPAddr).Port

	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	d := delivery.NewDialer(config.Delivery{Hostname: "sluice.test", ConnectTimeout: 5 * time.Second,
		CommandTimeout: 10 * time.Second, DataTimeout: 10 * time.Second}, nil)
	q := newQueue(sp, realDialer{d}, fakeBouncer{}, Options{IdleTimeout: time.Minute, Logger: slog.New(slog.DiscardHandler)})
	q.Start()
	defer q.Stop(context.Background())
	route := &pipeline.Route{Kind: pipeline.RouteRelay, Host: "127.0.0.1", Port: port, TLS: pipeline.TLSNone}
	send := func(addr string) string {
		m := &spool.Meta{ID: sp.NewID(), Sender: "a@origin.test", Source: "smtp", Received: time.Now(), Size: 20}
		b := sp.NewBatch()
		_ = b.PutMessage(m, []byte("Subject: x\r\n\r\nbody\r\n"))
		r := &spool.Recipient{MsgID: m.ID, Idx: 0, Address: addr, Domain: "dest.test", Route: route}
		_ = b.PutRecipient(r)
		if err := b.Commit(true); err != nil {
			t.Fatal(err)
		}
		q.Enqueue(m, []*spool.Recipient{r})
		return m.ID
	}
	ids := []string{}
	for i, addr := range []string{"one@dest.test", "two@dest.test", "three@dest.test"} {
		ids = append(ids, send(addr))
		testutil.WaitFor(t, "delivery", func() bool { return q.Stats().Messages == 0 })
		<-closed // the hop has closed this connection; the worker still keeps it
		if n := int(conns.Load()); n != i+1 {
			t.Fatalf("after message %d: %d connections, want %d", i+1, n, i+1)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 3 {
		t.Fatalf("hop got %q, want three recipients", got)
	}
	for _, id := range ids {
		h, err := sp.History(id)
		if err != nil {
			t.Fatal(err)
		}
		delivered := 0
		for _, e := range h {
			if e.Type == pipeline.EventDelivered {
				delivered++
			}
			if e.Type != pipeline.EventDelivered {
				t.Errorf("%s: event %s (%v): want delivered at the first attempt only", id, e.Type, e.Response)
			}
		}
		if delivered != 1 {
			t.Errorf("%s: %d delivered events, want 1", id, delivered)
		}
	}
}
