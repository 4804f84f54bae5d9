package smtpsrc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/relay"
	"github.com/sluice-mta/sluice/pipeline"
)

// ---- fake relay.Store ----

type submitted struct {
	ID     string
	Sender string
	Rcpts  []string
	Conn   pipeline.Conn // copy at commit time
	Data   []byte        // the message as it would be spooled
	Params pipeline.MailParams
	RcptP  []pipeline.RcptParams
}

type rejection struct {
	TxnID string
	Rcpt  string
	Reply pipeline.Error
}

// fakeSub is the relay's durable side in these tests: it records what the
// relay commits and the refusals it records, so the tests see exactly
// what the real relay decided.
type fakeSub struct {
	mu       sync.Mutex
	msgs     []submitted
	rejected []rejection
	// submitFn, when set, decides Commit's outcome after the call is recorded.
	submitFn func(ctx context.Context, msg *pipeline.Message) error
	discard  bool // do not record (benchmarks)
	// ids and now, when set, make ids and times predictable.
	ids func() string
	now func() time.Time
}

// fixedSub is a fakeSub with ids ID0001, ID0002 ... and a fixed clock.
func fixedSub() *fakeSub { return &fakeSub{ids: fixedIDs(), now: fixedClock} }

var _ relay.Store = (*fakeSub)(nil)

func (f *fakeSub) NewID() string {
	if f.ids != nil {
		return f.ids()
	}
	return NewID()
}

func (f *fakeSub) Commit(ctx context.Context, accs []*relay.Accepted, before relay.BeforeCommit) error {
	if f.discard {
		return nil
	}
	for _, a := range accs {
		s := submitted{ID: a.Msg.ID, Sender: a.Msg.Sender, Conn: *a.Msg.Conn, Data: a.Bytes(), Params: a.Msg.Params}
		for _, r := range a.Msg.Recipients {
			s.Rcpts = append(s.Rcpts, r.Address)
			s.RcptP = append(s.RcptP, r.Params)
		}
		f.mu.Lock()
		f.msgs = append(f.msgs, s)
		fn := f.submitFn
		f.mu.Unlock()
		if fn != nil {
			if err := fn(ctx, a.Msg); err != nil {
				return err
			}
		}
	}
	return nil
}

func (f *fakeSub) Record(evs []*pipeline.Event) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ev := range evs {
		if ev.Type != pipeline.EventRejected {
			continue
		}
		rep := pipeline.Error{}
		if ev.Response != nil {
			rep.Code, rep.Message = ev.Response.Code, ev.Response.Text
			rep.Enhanced, _ = pipeline.ParseEnhancedCode(ev.Response.Enhanced)
		}
		f.rejected = append(f.rejected, rejection{TxnID: ev.MessageID, Rcpt: ev.Recipient, Reply: rep})
	}
	return nil
}

// newRelay is a relay on chain whose store is sub.
func newRelay(chain *pipeline.Chain, sub relay.Store) *relay.Relay {
	o := relay.Options{Logger: testLogger(), Hostname: "relay.test"}
	if f, ok := sub.(*fakeSub); ok {
		o.Now = f.now
	}
	return relay.New(relay.NewPipeline(chain, nil), sub, o)
}

func (f *fakeSub) messages() []submitted {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]submitted(nil), f.msgs...)
}

func (f *fakeSub) rejections() []rejection {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]rejection(nil), f.rejected...)
}

// ---- a Go stage with optional hooks ----

type testStage struct {
	name    string
	connect func(ctx context.Context, c *pipeline.Conn) (pipeline.Verdict, error)
	helo    func(ctx context.Context, c *pipeline.Conn, name string) (pipeline.Verdict, error)
	mail    func(ctx context.Context, txn *pipeline.Txn) (pipeline.Verdict, error)
	rcpt    func(ctx context.Context, txn *pipeline.Txn, r *pipeline.Recipient) (pipeline.Verdict, error)
}

func (s *testStage) Name() string { return s.name }

func (s *testStage) OnConnect(ctx context.Context, c *pipeline.Conn) (pipeline.Verdict, error) {
	if s.connect == nil {
		return pipeline.Verdict{}, nil
	}
	return s.connect(ctx, c)
}

func (s *testStage) OnHelo(ctx context.Context, c *pipeline.Conn, name string) (pipeline.Verdict, error) {
	if s.helo == nil {
		return pipeline.Verdict{}, nil
	}
	return s.helo(ctx, c, name)
}

func (s *testStage) OnMail(ctx context.Context, txn *pipeline.Txn) (pipeline.Verdict, error) {
	if s.mail == nil {
		return pipeline.Verdict{}, nil
	}
	return s.mail(ctx, txn)
}

func (s *testStage) OnRcpt(ctx context.Context, txn *pipeline.Txn, r *pipeline.Recipient) (pipeline.Verdict, error) {
	if s.rcpt == nil {
		return pipeline.Verdict{}, nil
	}
	return s.rcpt(ctx, txn, r)
}

var (
	_ pipeline.ConnectHook = (*testStage)(nil)
	_ pipeline.HeloHook    = (*testStage)(nil)
	_ pipeline.MailHook    = (*testStage)(nil)
	_ pipeline.RcptHook    = (*testStage)(nil)
)

func newChain(t testing.TB, opts pipeline.ChainOptions, stages ...pipeline.Stage) *pipeline.Chain {
	t.Helper()
	if opts.LocalDomains == nil {
		opts.LocalDomains = []string{"local.test"}
	}
	opts.Logger = testLogger()
	c, err := pipeline.Compile(stages, opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// ---- server ----

// testLogger discards logs unless SMTPSRC_TEST_LOG is set (t.Log cannot be
// used: connection goroutines may log after a test returns).
func testLogger() *slog.Logger {
	if os.Getenv("SMTPSRC_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func testListener() config.SMTPListener {
	l := config.DefaultSMTPListener("127.0.0.1:0")
	l.Name = "test"
	l.Hostname = "mx.sluice.test"
	return l
}

// fixedIDs returns a generator of "ID0001", "ID0002", ...
func fixedIDs() func() string {
	var n atomic.Int64
	return func() string { return fmt.Sprintf("ID%04d", n.Add(1)) }
}

var testTime = time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)

func fixedClock() time.Time { return testTime }

type testServer struct {
	*Server
	addr  string
	serve chan error
}

func startServer(t testing.TB, l config.SMTPListener, chain *pipeline.Chain, sub relay.Store, opts ...Option) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.Addr = ln.Addr().String()
	srv, err := New(l, newRelay(chain, sub), testLogger(), opts...)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	srv.recoverPanics = false
	ts := &testServer{Server: srv, addr: ln.Addr().String(), serve: make(chan error, 1)}
	go func() { ts.serve <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		select {
		case err := <-ts.serve:
			if !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Serve did not return after Close")
		}
	})
	return ts
}

// ---- raw SMTP client ----

type client struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
}

type reply struct {
	Code  int
	Lines []string // text after "NNN-" / "NNN "
}

func (r reply) String() string { return fmt.Sprintf("%d %s", r.Code, strings.Join(r.Lines, " | ")) }

// Text is the last line's text.
func (r reply) Text() string {
	if len(r.Lines) == 0 {
		return ""
	}
	return r.Lines[len(r.Lines)-1]
}

func dial(t testing.TB, addr string) *client {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return newClient(t, c)
}

func newClient(t testing.TB, c net.Conn) *client {
	c.SetDeadline(time.Now().Add(20 * time.Second))
	cl := &client{t: t, conn: c, r: bufio.NewReader(c)}
	t.Cleanup(func() { c.Close() })
	return cl
}

// dialReady connects and expects the 220 greeting.
func dialReady(t testing.TB, addr string) *client {
	t.Helper()
	c := dial(t, addr)
	c.expect(220)
	return c
}

func (c *client) write(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// read reads one (possibly multi-line) reply.
func (c *client) read() (reply, error) {
	var r reply
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return r, err
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 4 {
			return r, fmt.Errorf("short reply line %q", line)
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil {
			return r, fmt.Errorf("bad reply line %q", line)
		}
		r.Code = code
		r.Lines = append(r.Lines, line[4:])
		if line[3] == ' ' {
			return r, nil
		}
	}
}

func (c *client) expect(code int) reply {
	c.t.Helper()
	r, err := c.read()
	if err != nil {
		c.t.Fatalf("reading reply (want %d): %v", code, err)
	}
	if r.Code != code {
		c.t.Fatalf("got reply %v, want %d", r, code)
	}
	return r
}

// cmd sends one command line and expects code.
func (c *client) cmd(line string, code int) reply {
	c.t.Helper()
	c.write(line + "\r\n")
	return c.expect(code)
}

func (c *client) ehlo() reply {
	c.t.Helper()
	return c.cmd("EHLO client.test", 250)
}

// expectClosed expects the server to close the connection (after any
// replies still in flight, which are returned).
func (c *client) expectClosed() []reply {
	c.t.Helper()
	var rs []reply
	for {
		r, err := c.read()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "reset by peer") {
				return rs
			}
			c.t.Fatalf("want connection closed, got %v (after %v)", err, rs)
		}
		rs = append(rs, r)
		if len(rs) > 10 {
			c.t.Fatalf("connection not closed: %v", rs)
		}
	}
}

// sendMessage runs one transaction; data is sent as given, then ".\r\n".
func (c *client) sendMessage(from string, rcpts []string, data string) reply {
	c.t.Helper()
	c.cmd("MAIL FROM:<"+from+">", 250)
	for _, r := range rcpts {
		c.cmd("RCPT TO:<"+r+">", 250)
	}
	c.cmd("DATA", 354)
	c.write(data + ".\r\n")
	r, err := c.read()
	if err != nil {
		c.t.Fatal(err)
	}
	return r
}

const simpleMsg = "From: a@local.test\r\nTo: bob@local.test\r\nSubject: hi\r\n\r\nHello\r\n"
