package smtpsrc

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

// TestReadTimeoutMidLine: a command line that does not end within
// read_timeout ends the session with 421 4.4.2; the partial line is never
// executed.
func TestReadTimeoutMidLine(t *testing.T) {
	l := testListener()
	l.ReadTimeout = 300 * time.Millisecond
	ts := startServer(t, l, newChain(t, pipeline.ChainOptions{}), &fakeSub{})
	c := dialReady(t, ts.addr)
	c.ehlo()
	c.write("NOOP")
	rs := c.expectClosed()
	if len(rs) != 1 || rs[0].Code != 421 || !strings.HasPrefix(rs[0].Text(), "4.4.2 ") {
		t.Fatalf("partial line at read timeout: %v, want one 421 4.4.2 then close", rs)
	}
}

// TestPerIPLimits: a client address over max_connections_per_ip, or over
// max_connection_rate_per_ip, gets 421 4.7.0 and is closed; a closed
// connection frees its place.
func TestPerIPLimits(t *testing.T) {
	l := testListener()
	l.MaxConnectionsPerIP = 2
	ts := startServer(t, l, newChain(t, pipeline.ChainOptions{}), &fakeSub{})
	a := dialReady(t, ts.addr)
	dialReady(t, ts.addr)
	c := dial(t, ts.addr)
	rs := c.expectClosed()
	if len(rs) != 1 || rs[0].Code != 421 || !strings.HasPrefix(rs[0].Text(), "4.7.0 ") {
		t.Fatalf("third connection: %v, want 421 4.7.0", rs)
	}
	a.cmd("QUIT", 221)
	a.expectClosed()
	waitUntil(t, func() bool { return ts.anvil.conns(netip.MustParseAddr("127.0.0.1")) < 2 })
	dialReady(t, ts.addr)

	l = testListener()
	l.MaxConnectionRatePerIP, l.ConnectionRateWindow = 3, time.Hour
	ts = startServer(t, l, newChain(t, pipeline.ChainOptions{}), &fakeSub{})
	for i := 0; i < 3; i++ {
		c := dialReady(t, ts.addr)
		c.cmd("QUIT", 221)
	}
	if rs := dial(t, ts.addr).expectClosed(); len(rs) != 1 || rs[0].Code != 421 || !strings.HasPrefix(rs[0].Text(), "4.7.0 ") {
		t.Fatalf("fourth connection in the window: %v, want 421 4.7.0", rs)
	}
}

// TestMaxSessionTime: a session that keeps sending commands still ends at
// max_session_time with 421 4.4.2.
func TestMaxSessionTime(t *testing.T) {
	l := testListener()
	l.MaxSessionTime = 500 * time.Millisecond
	ts := startServer(t, l, newChain(t, pipeline.ChainOptions{}), &fakeSub{})
	c := dialReady(t, ts.addr)
	c.ehlo()
	start := time.Now()
	for time.Since(start) < 3*time.Second {
		c.write("NOOP\r\n")
		r, err := c.read()
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if r.Code == 421 {
			if !strings.HasPrefix(r.Text(), "4.4.2 ") || time.Since(start) < 400*time.Millisecond {
				t.Fatalf("%v after %v", r, time.Since(start))
			}
			c.expectClosed()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("session still open after 3 s with max_session_time 500ms")
}

// TestInflightBudget: with one message held in memory (its commit blocked
// in a stage), a second one that does not fit the listener's budget gets
// 452 4.3.1 after its end of data; once the first is done, it fits.
func TestInflightBudget(t *testing.T) {
	l := testListener()
	l.MaxInflightBytes = 4 << 20
	ts := startServer(t, l, newChain(t, pipeline.ChainOptions{}), &fakeSub{})
	body := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 998)+"\r\n", 1200) // ~1.2 MB

	// Hold the budget directly as a message in flight would.
	if !ts.inflight.reserve(3 << 20) {
		t.Fatal("reserve")
	}
	c := dialReady(t, ts.addr)
	c.ehlo()
	r := c.sendMessage("a@local.test", []string{"bob@local.test"}, body)
	if r.Code != 452 || !strings.HasPrefix(r.Text(), "4.3.1 ") {
		t.Fatalf("over the budget: %v, want 452 4.3.1", r)
	}
	c.cmd("NOOP", 250) // the rest of the data was read: replies are in step
	ts.inflight.release(3 << 20)
	if r := c.sendMessage("a@local.test", []string{"bob@local.test"}, body); r.Code != 250 {
		t.Fatalf("within the budget: %v", r)
	}
	if n := ts.inflight.inUse(); n != 0 {
		t.Errorf("budget holds %d after the transactions", n)
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("condition not met in 2 s")
}

// TestRefusalLogAddsUp: a flood of refusals is logged in a few lines whose
// counts add up to the number refused (issue 14: ~1,000 refusals were
// logged as refused=1).
func TestRefusalLogAddsUp(t *testing.T) {
	var mu sync.Mutex
	var total int64
	lines := 0
	h := &captureHandler{fn: func(r slog.Record) {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "refused" {
				mu.Lock()
				total += a.Value.Int64()
				lines++
				mu.Unlock()
			}
			return true
		})
	}}
	rl := newRefusalLog(slog.New(h), map[string]string{reasonBusy: "10"})
	for i := 0; i < 1000; i++ {
		reason := reasonPerIP
		if i%3 == 0 {
			reason = reasonBusy + ", " + reasonNoReply
		}
		rl.note(reason, "192.0.2.1:1234")
	}
	rl.close()
	mu.Lock()
	defer mu.Unlock()
	if total != 1000 || lines > 3 {
		t.Errorf("logged %d refusals in %d lines, want 1000 in at most 3", total, lines)
	}
}

type captureHandler struct{ fn func(slog.Record) }

func (h *captureHandler) Enabled(context.Context, slog.Level) bool      { return true }
func (h *captureHandler) Handle(_ context.Context, r slog.Record) error { h.fn(r); return nil }
func (h *captureHandler) WithAttrs([]slog.Attr) slog.Handler            { return h }
func (h *captureHandler) WithGroup(string) slog.Handler                 { return h }
