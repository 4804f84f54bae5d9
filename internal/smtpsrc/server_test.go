package smtpsrc

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	netsmtp "net/smtp"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

func TestEHLOCapabilities(t *testing.T) {
	l := testListener()
	l.MaxMessageSize = 1 << 20
	l.MaxRecipients = 50
	ts := startServer(t, l, newChain(t, pipeline.ChainOptions{}), &fakeSub{})

	c := dial(t, ts.addr)
	if g := c.expect(220); !strings.HasPrefix(g.Text(), "mx.sluice.test ESMTP") {
		t.Errorf("greeting %q does not name the listener's hostname", g.Text())
	}
	r := c.ehlo()
	caps := map[string]bool{}
	for _, line := range r.Lines[1:] {
		caps[line] = true
	}
	for _, want := range []string{"PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE 1048576", "ENHANCEDSTATUSCODES", "CHUNKING", "LIMITS RCPTMAX=50"} {
		if !caps[want] {
			t.Errorf("EHLO lacks %q; got %q", want, r.Lines)
		}
	}
	for _, line := range r.Lines {
		if strings.HasPrefix(line, "STARTTLS") || strings.HasPrefix(line, "AUTH") {
			t.Errorf("EHLO offers %q without TLS/AUTH configured", line)
		}
	}
	c.cmd("QUIT", 221)
}

// TestSubmitExactBytes checks the bytes the Submitter receives: our
// Received field on top, then the client's data unchanged but for
// dot-unstuffing, and the envelope and connection it sees.
func TestSubmitExactBytes(t *testing.T) {
	sub := fixedSub()
	ts := startServer(t, testListener(), newChain(t, pipeline.ChainOptions{}), sub)

	c := dialReady(t, ts.addr)
	c.ehlo()
	data := "From: a@local.test\r\nSubject: hi\r\n\r\nHello\r\n..leading dot\r\nbye\r\n"
	r := c.sendMessage("a@local.test", []string{"bob@local.test"}, data)
	// ID0001 is the connection, ID0002 the message.
	if r.Code != 250 || r.Text() != "2.0.0 OK: queued as ID0002" {
		t.Fatalf("DATA reply %v", r)
	}
	msgs := sub.messages()
	if len(msgs) != 1 {
		t.Fatalf("%d submits, want 1", len(msgs))
	}
	m := msgs[0]
	want := "Received: from client.test ([127.0.0.1]) by mx.sluice.test with ESMTP id\r\n" +
		" ID0002 for <bob@local.test>; Sun, 22 Nov 2026 10:00:00 +0000\r\n" +
		"From: a@local.test\r\nSubject: hi\r\n\r\nHello\r\n.leading dot\r\nbye\r\n"
	if string(m.Data) != want {
		t.Errorf("submitted bytes:\n%q\nwant:\n%q", m.Data, want)
	}
	if m.ID != "ID0002" || m.Sender != "a@local.test" || len(m.Rcpts) != 1 || m.Rcpts[0] != "bob@local.test" {
		t.Errorf("envelope %+v", m)
	}
	wantConn := pipeline.Conn{ID: "ID0001", Source: "smtp", Listener: "test", ServerName: "mx.sluice.test", RemoteIP: netip.MustParseAddr("127.0.0.1"),
		RemotePort: m.Conn.RemotePort, HELO: "client.test"}
	if m.Conn != wantConn || m.Conn.RemotePort == 0 {
		t.Errorf("conn %+v, want %+v", m.Conn, wantConn)
	}

	// A second message on the same session gets a new id; the null
	// sender and two recipients (no "for" clause).
	r = c.sendMessage("", []string{"bob@local.test", "carol@local.test"}, simpleMsg)
	if r.Code != 250 {
		t.Fatalf("second DATA reply %v", r)
	}
	m = sub.messages()[1]
	if m.ID != "ID0003" || m.Sender != "" || len(m.Rcpts) != 2 {
		t.Errorf("second envelope %+v", m)
	}
	if !bytes.HasPrefix(m.Data, []byte("Received: from client.test ([127.0.0.1]) by mx.sluice.test with ESMTP id\r\n ID0003; Sun, 22 Nov 2026")) {
		t.Errorf("second Received: %q", m.Data)
	}
	c.cmd("QUIT", 221)
}

func TestDuplicateRecipientOnce(t *testing.T) {
	sub := &fakeSub{}
	ts := startServer(t, testListener(), newChain(t, pipeline.ChainOptions{}), sub)
	c := dialReady(t, ts.addr)
	c.ehlo()
	if r := c.sendMessage("a@local.test", []string{"bob@local.test", "bob@LOCAL.test"}, simpleMsg); r.Code != 250 {
		t.Fatal(r)
	}
	if m := sub.messages(); len(m) != 1 || len(m[0].Rcpts) != 1 {
		t.Fatalf("submits %+v", m)
	}
}

func TestSTARTTLS(t *testing.T) {
	crt := testutil.SelfSignedCert(t, "mx.sluice.test", "127.0.0.1")
	l := testListener()
	l.TLS = &config.TLS{Cert: crt.CertFile, Key: crt.KeyFile}
	sub := &fakeSub{}
	ts := startServer(t, l, newChain(t, pipeline.ChainOptions{}), sub)

	c, err := netsmtp.Dial(ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("STARTTLS"); !ok {
		t.Fatal("STARTTLS not offered with tls configured")
	}
	if err := c.StartTLS(crt.ClientTLS("mx.sluice.test")); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Error("STARTTLS offered again inside TLS")
	}
	if err := c.Mail("a@local.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("bob@local.test"); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(w, simpleMsg)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	c.Quit()

	msgs := sub.messages()
	if len(msgs) != 1 {
		t.Fatalf("%d submits", len(msgs))
	}
	if msgs[0].Conn.TLS != "TLS1.3" {
		t.Errorf("Conn.TLS = %q, want TLS1.3", msgs[0].Conn.TLS)
	}
	if !bytes.Contains(msgs[0].Data, []byte("with ESMTPS id")) {
		t.Errorf("Received does not say ESMTPS: %q", msgs[0].Data)
	}
}

func TestImplicitTLS(t *testing.T) {
	crt := testutil.SelfSignedCert(t, "mx.sluice.test", "127.0.0.1")
	l := testListener()
	l.TLS = &config.TLS{Cert: crt.CertFile, Key: crt.KeyFile}
	l.ImplicitTLS = true
	sub := &fakeSub{}
	ts := startServer(t, l, newChain(t, pipeline.ChainOptions{}), sub)

	tc, err := tls.Dial("tcp", ts.addr, crt.ClientTLS("mx.sluice.test"))
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, tc)
	c.expect(220)
	for _, line := range c.ehlo().Lines {
		if strings.HasPrefix(line, "STARTTLS") {
			t.Error("STARTTLS offered on an implicit TLS listener")
		}
	}
	if r := c.sendMessage("a@local.test", []string{"bob@local.test"}, simpleMsg); r.Code != 250 {
		t.Fatal(r)
	}
	c.cmd("QUIT", 221)
	msgs := sub.messages()
	if len(msgs) != 1 || msgs[0].Conn.TLS != "TLS1.3" || !bytes.Contains(msgs[0].Data, []byte("with ESMTPS id")) {
		t.Fatalf("submits %+v", msgs)
	}
}

func TestRelayControl(t *testing.T) {
	sub := &fakeSub{}
	chain := newChain(t, pipeline.ChainOptions{LocalDomains: []string{"local.test"}})
	ts := startServer(t, testListener(), chain, sub)

	c := dialReady(t, ts.addr)
	c.ehlo()
	c.cmd("MAIL FROM:<a@elsewhere.test>", 250)
	if r := c.cmd("RCPT TO:<bob@foreign.test>", 550); r.Text() != "5.7.1 Relay access denied" {
		t.Errorf("foreign RCPT: %v", r)
	}
	c.cmd("RCPT TO:<bob@local.test>", 250)
	c.cmd("RCPT TO:<bob@Local.Test>", 250) // domains compare case-insensitively (and once)
	if r := c.cmd("RCPT TO:<\"a\tb\"@local.test>", 501); !strings.HasPrefix(r.Text(), "5.1.3 ") {
		t.Errorf("bad address: %v", r)
	}
	c.cmd("RSET", 250)
	rj := sub.rejections()
	if len(rj) != 1 || rj[0].Rcpt != "bob@foreign.test" || rj[0].Reply.Code != 550 || rj[0].TxnID == "" {
		t.Errorf("Rejected calls %+v, want one for bob@foreign.test", rj)
	}

	// From a relay network, a foreign domain is accepted.
	l := testListener()
	l.RelayNetworks = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	sub2 := &fakeSub{}
	ts2 := startServer(t, l, chain, sub2)
	c2 := dialReady(t, ts2.addr)
	c2.ehlo()
	if r := c2.sendMessage("a@local.test", []string{"bob@foreign.test"}, simpleMsg); r.Code != 250 {
		t.Fatal(r)
	}
	if m := sub2.messages(); len(m) != 1 || !m[0].Conn.RelayNetwork {
		t.Errorf("submits %+v", m)
	}
}

func TestOversize(t *testing.T) {
	l := testListener()
	l.MaxMessageSize = 1024
	sub := &fakeSub{}
	ts := startServer(t, l, newChain(t, pipeline.ChainOptions{}), sub)
	c := dialReady(t, ts.addr)
	c.ehlo()

	// Declared too big at MAIL.
	if r := c.cmd("MAIL FROM:<a@local.test> SIZE=5000", 552); !strings.HasPrefix(r.Text(), "5.3.4 ") {
		t.Errorf("MAIL SIZE: %v", r)
	}
	// Too big in DATA: the reply comes after the whole data, the session
	// continues.
	r := c.sendMessage("a@local.test", []string{"bob@local.test"}, simpleMsg+strings.Repeat("x", 78)+"\r\n"+strings.Repeat(strings.Repeat("y", 78)+"\r\n", 20))
	if r.Code != 552 || !strings.HasPrefix(r.Text(), "5.3.4 ") {
		t.Errorf("DATA oversize: %v", r)
	}
	if r := c.sendMessage("a@local.test", []string{"bob@local.test"}, simpleMsg); r.Code != 250 {
		t.Errorf("small message after oversize: %v", r)
	}
	if n := len(sub.messages()); n != 1 {
		t.Errorf("%d submits, want 1", n)
	}
	rj := sub.rejections()
	if len(rj) != 1 || rj[0].Rcpt != "bob@local.test" || rj[0].Reply.Code != 552 {
		t.Errorf("Rejected calls %+v", rj)
	}

	// BDAT beyond the limit. (The chunk has short lines: go-smtp applies
	// its line limit to chunk bytes that arrive in the same read as the
	// BDAT command line.)
	c.cmd("MAIL FROM:<a@local.test>", 250)
	c.cmd("RCPT TO:<bob@local.test>", 250)
	c.write(fmt.Sprintf("BDAT 2000 LAST\r\n%s", strings.Repeat(strings.Repeat("z", 98)+"\r\n", 20)))
	if r := c.expect(552); !strings.HasPrefix(r.Text(), "5.3.4 ") {
		t.Errorf("BDAT oversize: %v", r)
	}
	c.cmd("NOOP", 250)
}

func TestTooManyRecipients(t *testing.T) {
	l := testListener()
	l.MaxRecipients = 2
	ts := startServer(t, l, newChain(t, pipeline.ChainOptions{}), &fakeSub{})
	c := dialReady(t, ts.addr)
	c.ehlo()
	c.cmd("MAIL FROM:<a@local.test>", 250)
	c.cmd("RCPT TO:<a1@local.test>", 250)
	c.cmd("RCPT TO:<a2@local.test>", 250)
	if r := c.cmd("RCPT TO:<a3@local.test>", 452); !strings.HasPrefix(r.Text(), "4.5.3 ") {
		t.Errorf("third RCPT: %v", r)
	}
}

func TestStageReplies(t *testing.T) {
	const secret = "password=hunter2 at db.internal:5432"
	stage := &testStage{
		name: "policy",
		mail: func(ctx context.Context, txn *pipeline.Txn) (pipeline.Verdict, error) {
			switch txn.Sender {
			case "grey@x.test":
				return pipeline.TempfailVerdict(451, pipeline.EnhancedCode{4, 7, 1}, "Greylisted, come back later"), nil
			case "spam@x.test":
				return pipeline.RejectVerdict(550, pipeline.EnhancedCode{5, 7, 1}, "Sender blocked\r\n250 injected"), nil
			}
			return pipeline.Verdict{}, nil
		},
		rcpt: func(ctx context.Context, txn *pipeline.Txn, r *pipeline.Recipient) (pipeline.Verdict, error) {
			switch r.Local {
			case "slow":
				select {
				case <-time.After(2 * time.Second):
					return pipeline.Verdict{}, nil
				case <-ctx.Done():
					return pipeline.Verdict{}, ctx.Err()
				}
			case "broken":
				return pipeline.Verdict{}, errors.New("lookup failed: " + secret)
			case "custom":
				return pipeline.Verdict{}, &pipeline.Error{Code: 450, Enhanced: pipeline.EnhancedCode{4, 2, 1}, Message: "Mailbox busy", Cause: errors.New(secret)}
			}
			return pipeline.Verdict{}, nil
		},
	}
	sub := &fakeSub{}
	ts := startServer(t, testListener(), newChain(t, pipeline.ChainOptions{StageTimeout: 50 * time.Millisecond}, stage), sub)

	c := dialReady(t, ts.addr)
	c.ehlo()
	if r := c.cmd("MAIL FROM:<grey@x.test>", 451); r.Text() != "4.7.1 Greylisted, come back later" {
		t.Errorf("tempfail: %v", r)
	}
	if r := c.cmd("MAIL FROM:<spam@x.test>", 550); r.Text() != "5.7.1 Sender blocked 250 injected" {
		t.Errorf("reject: %v", r)
	}
	c.cmd("MAIL FROM:<ok@x.test>", 250)
	if r := c.cmd("RCPT TO:<broken@local.test>", 451); r.Text() != "4.3.0 Internal error, try again later" {
		t.Errorf("internal error: %v", r)
	}
	if r := c.cmd("RCPT TO:<custom@local.test>", 450); r.Text() != "4.2.1 Mailbox busy" {
		t.Errorf("custom *Error: %v", r)
	}
	start := time.Now()
	if r := c.cmd("RCPT TO:<slow@local.test>", 451); r.Text() != "4.4.5 Policy check timed out, try again later" {
		t.Errorf("stage timeout: %v", r)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("stage timeout took %v", d)
	}
	c.cmd("QUIT", 221)

	// Two refused transactions (on_mail: no recipient known) and three
	// refused recipients.
	rj := sub.rejections()
	if len(rj) != 5 || rj[0].Rcpt != "" || rj[1].Rcpt != "" || rj[2].Rcpt != "broken@local.test" {
		t.Fatalf("Rejected calls %+v, want 5", rj)
	}
	for _, x := range rj {
		if strings.Contains(x.Reply.Message, "hunter2") {
			t.Errorf("internal text in rejection reply %+v", x)
		}
	}

	// The server keeps serving after a stage timed out.
	c2 := dialReady(t, ts.addr)
	c2.ehlo()
	if r := c2.sendMessage("ok@x.test", []string{"bob@local.test"}, simpleMsg); r.Code != 250 {
		t.Fatalf("next session: %v", r)
	}
}

// TestNoLeakInAnyReply sends everything through one connection and checks
// the raw reply bytes for the internal text.
func TestNoLeakInAnyReply(t *testing.T) {
	const secret = "hunter2"
	sub := &fakeSub{submitFn: func(ctx context.Context, msg *pipeline.Message) error {
		return fmt.Errorf("pebble: fsync /var/spool/%s: input/output error", secret)
	}}
	ts := startServer(t, testListener(), newChain(t, pipeline.ChainOptions{}), sub)
	c := dialReady(t, ts.addr)
	c.ehlo()
	r := c.sendMessage("a@local.test", []string{"bob@local.test"}, simpleMsg)
	if r.Code != 451 || r.Text() != "4.3.0 Cannot store the message now, try again later" {
		t.Errorf("submit failure reply %v", r)
	}
	if rj := sub.rejections(); len(rj) != 1 || rj[0].Rcpt != "bob@local.test" || rj[0].Reply.Code != 451 {
		t.Errorf("Rejected calls %+v", rj)
	}
	// A stage's *pipeline.Error passes through without its cause.
	spam := &messageStage{name: "spam", fn: func(*pipeline.Message) (pipeline.Verdict, error) {
		return pipeline.Verdict{}, &pipeline.Error{Code: 550, Enhanced: pipeline.EnhancedCode{5, 7, 1}, Message: "Spam detected", Cause: errors.New(secret)}
	}}
	ts2 := startServer(t, testListener(), newChain(t, pipeline.ChainOptions{}, spam), &fakeSub{})
	c2 := dialReady(t, ts2.addr)
	c2.ehlo()
	if r := c2.sendMessage("a@local.test", []string{"bob@local.test"}, simpleMsg); r.Code != 550 || r.Text() != "5.7.1 Spam detected" {
		t.Errorf("stage reject reply %v", r)
	}
}

type messageStage struct {
	name string
	fn   func(*pipeline.Message) (pipeline.Verdict, error)
}

func (s *messageStage) Name() string { return s.name }
func (s *messageStage) OnMessage(ctx context.Context, m *pipeline.Message) (pipeline.Verdict, error) {
	return s.fn(m)
}

func TestConnectRefused(t *testing.T) {
	stage := &testStage{name: "dnsbl", connect: func(ctx context.Context, c *pipeline.Conn) (pipeline.Verdict, error) {
		if c.RemoteIP.String() != "127.0.0.1" || c.ID == "" || c.Source != "smtp" {
			return pipeline.Verdict{}, errors.New("bad conn")
		}
		return pipeline.RejectVerdict(554, pipeline.EnhancedCode{5, 7, 1}, "Listed at dnsbl.test"), nil
	}}
	ts := startServer(t, testListener(), newChain(t, pipeline.ChainOptions{}, stage), &fakeSub{})
	c := dial(t, ts.addr)
	if r := c.expect(554); r.Text() != "5.7.1 Listed at dnsbl.test" {
		t.Errorf("connect reject: %v", r)
	}
	c.expectClosed()

	temp := &testStage{name: "limit", connect: func(ctx context.Context, c *pipeline.Conn) (pipeline.Verdict, error) {
		return pipeline.TempfailVerdict(451, pipeline.EnhancedCode{4, 7, 0}, "Too many connections from your network"), nil
	}}
	ts2 := startServer(t, testListener(), newChain(t, pipeline.ChainOptions{}, temp), &fakeSub{})
	c2 := dial(t, ts2.addr)
	if r := c2.expect(421); r.Text() != "4.7.0 Too many connections from your network" {
		t.Errorf("connect tempfail: %v", r)
	}
	c2.expectClosed()
}

func TestHeloRefused(t *testing.T) {
	var names []string
	stage := &testStage{name: "helo", helo: func(ctx context.Context, c *pipeline.Conn, name string) (pipeline.Verdict, error) {
		names = append(names, name) // one connection at a time in this test
		if name == "localhost" {
			return pipeline.RejectVerdict(550, pipeline.EnhancedCode{5, 7, 1}, "Bad HELO"), nil
		}
		return pipeline.Verdict{}, nil
	}}
	sub := &fakeSub{}
	ts := startServer(t, testListener(), newChain(t, pipeline.ChainOptions{}, stage), sub)
	c := dialReady(t, ts.addr)
	if r := c.cmd("EHLO localhost", 550); r.Text() != "5.7.1 Bad HELO" {
		t.Errorf("EHLO: %v", r)
	}
	c.cmd("MAIL FROM:<a@local.test>", 503) // must greet first
	c.cmd("EHLO good.test", 250)
	// A second EHLO with a new name runs on_helo again, at MAIL.
	c.cmd("EHLO localhost", 250)
	c.cmd("MAIL FROM:<a@local.test>", 550)
	// Asking again does not make a refused name acceptable.
	c.cmd("MAIL FROM:<a@local.test>", 550)
	c.cmd("EHLO other.test", 250)
	if r := c.sendMessage("a@local.test", []string{"bob@local.test"}, simpleMsg); r.Code != 250 {
		t.Fatal(r)
	}
	if m := sub.messages(); len(m) != 1 || m[0].Conn.HELO != "other.test" {
		t.Errorf("submits %+v", m)
	}
	if got := strings.Join(names, ","); got != "localhost,good.test,localhost,localhost,other.test" {
		t.Errorf("on_helo calls %s", got)
	}
}

func TestMaxConnections(t *testing.T) {
	l := testListener()
	l.MaxConnections = 2
	ts := startServer(t, l, newChain(t, pipeline.ChainOptions{}), &fakeSub{})
	c1 := dialReady(t, ts.addr)
	c2 := dialReady(t, ts.addr)
	c3 := dial(t, ts.addr)
	if r := c3.expect(421); r.Text() != "4.3.2 Too many connections, try again later" {
		t.Errorf("third connection: %v", r)
	}
	c3.expectClosed()
	c2.ehlo()

	// Closing one frees its slot.
	c1.cmd("QUIT", 221)
	c1.expectClosed()
	testutil.WaitFor(t, "a free slot", func() bool {
		c := dial(t, ts.addr)
		r, err := c.read()
		c.conn.Close()
		return err == nil && r.Code == 220
	})
}

func TestLineTooLong(t *testing.T) {
	l := testListener()
	l.MaxLineLength = 100
	sub := &fakeSub{}
	ts := startServer(t, l, newChain(t, pipeline.ChainOptions{}), sub)
	c := dialReady(t, ts.addr)
	c.ehlo()
	// 98 characters + CRLF = 100 bytes is the longest line allowed.
	ok := simpleMsg + strings.Repeat("a", 98) + "\r\n"
	if r := c.sendMessage("a@local.test", []string{"bob@local.test"}, ok); r.Code != 250 {
		t.Fatalf("line at the limit: %v", r)
	}
	long := simpleMsg + strings.Repeat("a", 99) + "\r\n"
	if r := c.sendMessage("a@local.test", []string{"bob@local.test"}, long); r.Code != 554 || !strings.HasPrefix(r.Text(), "5.6.0 ") {
		t.Errorf("long line: %v", r)
	}
	// One reply, after the end of data: the connection goes on in step.
	c.cmd("NOOP", 250)
	if r := c.sendMessage("a@local.test", []string{"bob@local.test"}, ok); r.Code != 250 {
		t.Fatalf("message after the long line: %v", r)
	}
	if n := len(sub.messages()); n != 2 {
		t.Errorf("%d submits", n)
	}
}

// Header defects that peers accept are accepted and passed on byte for
// byte after our Received field (issue 13 item 5): no empty line between
// header and body, only a body, an mbox "From " line first.
func TestMalformedHeader(t *testing.T) {
	sub := &fakeSub{}
	ts := startServer(t, testListener(), newChain(t, pipeline.ChainOptions{}), sub)
	c := dialReady(t, ts.addr)
	c.ehlo()
	datas := []string{
		"Subject: no blank line\r\nbody right after the header\r\n",
		"only a body, no header\r\nsecond line\r\n",
		"From sender@example.org Mon Nov 30 05:00:00 2026\r\nSubject: mbox\r\n\r\nbody\r\n",
		"no header line here\r\n\r\nbody\r\n", " leading space: x\r\n\r\nbody\r\n", "Bad Key: x\r\n\r\n",
	}
	for _, data := range datas {
		if r := c.sendMessage("a@local.test", []string{"bob@local.test"}, data); r.Code != 250 {
			t.Errorf("data %q: %v", data, r)
		}
	}
	m := sub.messages()
	if len(m) != len(datas) {
		t.Fatalf("%d submits", len(m))
	}
	for i, data := range datas {
		got := string(m[i].Data)
		// An mbox "From " line first is framing: dropped.
		data = strings.TrimPrefix(data, "From sender@example.org Mon Nov 30 05:00:00 2026\r\n")
		if !strings.HasPrefix(got, "Received: ") || !strings.HasSuffix(got, "\r\n"+data) {
			t.Errorf("data %q spooled as %q", data, got)
		}
	}
}

func TestBDAT(t *testing.T) {
	sub := &fakeSub{}
	ts := startServer(t, testListener(), newChain(t, pipeline.ChainOptions{}), sub)
	c := dialReady(t, ts.addr)
	c.ehlo()
	c.cmd("MAIL FROM:<a@local.test>", 250)
	c.cmd("RCPT TO:<bob@local.test>", 250)
	p1, p2 := simpleMsg[:20], simpleMsg[20:]+".not stuffed\r\n"
	c.write(fmt.Sprintf("BDAT %d\r\n%s", len(p1), p1))
	c.expect(250)
	c.write(fmt.Sprintf("BDAT %d LAST\r\n%s", len(p2), p2))
	if r := c.expect(250); !strings.HasPrefix(r.Text(), "2.0.0 OK: queued as ") {
		t.Errorf("BDAT LAST: %v", r)
	}
	msgs := sub.messages()
	if len(msgs) != 1 || !bytes.HasSuffix(msgs[0].Data, []byte("\r\n\r\nHello\r\n.not stuffed\r\n")) {
		t.Fatalf("submits %+v", msgs)
	}

	// A bare LF in a chunk is refused like in DATA.
	c.cmd("MAIL FROM:<a@local.test>", 250)
	c.cmd("RCPT TO:<bob@local.test>", 250)
	bad := "Subject: x\r\n\r\nline\n.\nMAIL FROM:<e@x>\r\n"
	c.write(fmt.Sprintf("BDAT %d LAST\r\n%s", len(bad), bad))
	if r := c.expect(554); !strings.HasPrefix(r.Text(), "5.6.0 ") {
		t.Errorf("BDAT bare LF: %v", r)
	}
	c.cmd("QUIT", 221)
	if n := len(sub.messages()); n != 1 {
		t.Errorf("%d submits", n)
	}
}

func TestDataTimeout(t *testing.T) {
	l := testListener()
	l.DataTimeout = 300 * time.Millisecond
	sub := &fakeSub{}
	ts := startServer(t, l, newChain(t, pipeline.ChainOptions{}), sub)
	c := dialReady(t, ts.addr)
	c.ehlo()
	c.cmd("MAIL FROM:<a@local.test>", 250)
	c.cmd("RCPT TO:<bob@local.test>", 250)
	c.cmd("DATA", 354)
	start := time.Now()
	c.write("Subject: slow\r\n\r\nfirst line\r\n") // then stall
	r := c.expect(421)
	if !strings.HasPrefix(r.Text(), "4.4.2 ") {
		t.Errorf("data timeout: %v", r)
	}
	c.expectClosed()
	if d := time.Since(start); d < 250*time.Millisecond || d > 3*time.Second {
		t.Errorf("data timeout after %v, want about 300ms", d)
	}
	if n := len(sub.messages()); n != 0 {
		t.Errorf("%d submits", n)
	}
}

func TestShutdownGraceful(t *testing.T) {
	sub := &fakeSub{}
	ts := startServer(t, testListener(), newChain(t, pipeline.ChainOptions{}), sub)
	idle := dialReady(t, ts.addr)
	idle.ehlo()
	busy := dialReady(t, ts.addr)
	busy.ehlo()
	busy.cmd("MAIL FROM:<a@local.test>", 250)
	busy.cmd("RCPT TO:<bob@local.test>", 250)

	done := make(chan error, 1)
	go func() { done <- ts.Shutdown(context.Background()) }()

	// The idle session is closed with a 421.
	rs := idle.expectClosed()
	if len(rs) != 1 || rs[0].Code != 421 {
		t.Errorf("idle session got %v", rs)
	}
	// New connections are refused.
	testutil.WaitFor(t, "listener closed", func() bool {
		c, err := net.DialTimeout("tcp", ts.addr, time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	// The transaction in progress completes, then its session is closed.
	busy.cmd("DATA", 354)
	busy.write(simpleMsg + ".\r\n")
	busy.expect(250)
	busy.expectClosed()

	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	if n := len(sub.messages()); n != 1 {
		t.Errorf("%d submits", n)
	}
	select {
	case err := <-ts.serve:
		if !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
		ts.serve <- err // for the cleanup check
	case <-time.After(5 * time.Second):
		t.Error("Serve did not return")
	}
	if err := ts.Shutdown(context.Background()); !errors.Is(err, ErrServerClosed) {
		t.Errorf("second Shutdown: %v", err)
	}
}

func TestShutdownDeadlineCancelsSessions(t *testing.T) {
	cancelled := make(chan struct{})
	sub := &fakeSub{submitFn: func(ctx context.Context, msg *pipeline.Message) error {
		<-ctx.Done()
		close(cancelled)
		return ctx.Err()
	}}
	ts := startServer(t, testListener(), newChain(t, pipeline.ChainOptions{}), sub)
	c := dialReady(t, ts.addr)
	c.ehlo()
	c.cmd("MAIL FROM:<a@local.test>", 250)
	c.cmd("RCPT TO:<bob@local.test>", 250)
	c.cmd("DATA", 354)
	c.write(simpleMsg + ".\r\n")
	testutil.WaitFor(t, "Submit called", func() bool { return len(sub.messages()) == 1 })

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := ts.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: %v, want deadline exceeded", err)
	}
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("Submit's ctx not cancelled")
	}
	c.expectClosed()
	if rj := sub.rejections(); len(rj) != 0 {
		t.Errorf("an aborted submit was recorded as rejected: %+v", rj)
	}
}

func TestNewValidates(t *testing.T) {
	chain := newChain(t, pipeline.ChainOptions{})
	for name, mod := range map[string]func(*config.SMTPListener){
		"bare mode":         func(l *config.SMTPListener) { l.BareLineEnding = "fix" },
		"auth unknown":      func(l *config.SMTPListener) { l.Auth = "sometimes" },
		"implicit, no tls":  func(l *config.SMTPListener) { l.ImplicitTLS = true },
		"missing cert file": func(l *config.SMTPListener) { l.TLS = &config.TLS{Cert: "/nonexistent.pem", Key: "/nonexistent.key"} },
	} {
		l := testListener()
		mod(&l)
		if _, err := New(l, newRelay(chain, &fakeSub{}), nil); err == nil {
			t.Errorf("%s: New accepted %+v", name, l)
		}
	}
	if _, err := New(testListener(), nil, nil); err == nil {
		t.Error("New accepted a nil relay")
	}
	// Zero limits take the defaults.
	l := config.SMTPListener{Addr: "127.0.0.1:0"}
	s, err := New(l, newRelay(chain, &fakeSub{}), nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.l.MaxMessageSize != 25<<20 || s.l.MaxConnections != 1000 || s.l.BareLineEnding != "reject" || s.l.Name != l.Addr || s.hostname == "" {
		t.Errorf("defaults not applied: %+v", s.l)
	}
	if err := s.Close(); err != nil {
		t.Error(err)
	}
	if err := s.Serve(mustListen(t)); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Close: %v", err)
	}
}

func mustListen(t testing.TB) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func TestBDATTimeoutAndLongLine(t *testing.T) {
	l := testListener()
	l.DataTimeout = 300 * time.Millisecond
	l.MaxLineLength = 100
	sub := &fakeSub{}
	ts := startServer(t, l, newChain(t, pipeline.ChainOptions{}), sub)

	// A chunk that never completes: the connection is closed.
	c := dialReady(t, ts.addr)
	c.ehlo()
	c.cmd("MAIL FROM:<a@local.test>", 250)
	c.cmd("RCPT TO:<bob@local.test>", 250)
	c.write("BDAT 1000 LAST\r\nSubject: x\r\n\r\nonly part\r\n")
	rs := c.expectClosed()
	if len(rs) == 0 || rs[len(rs)-1].Code != 421 {
		t.Errorf("stalled BDAT: %v", rs)
	}

	// A BDAT chunk with a line over the limit is refused: by our check
	// (554 5.6.0), or by go-smtp's (500, closing) when the chunk arrived in
	// the same read as the command.
	c2 := dialReady(t, ts.addr)
	c2.ehlo()
	c2.cmd("MAIL FROM:<a@local.test>", 250)
	c2.cmd("RCPT TO:<bob@local.test>", 250)
	body := "Subject: x\r\n\r\n" + strings.Repeat("w", 200) + "\r\n"
	c2.write(fmt.Sprintf("BDAT %d LAST\r\n%s", len(body), body))
	r, err := c2.read()
	if err != nil || (r.Code != 554 && r.Code != 500) {
		t.Errorf("long BDAT line: %v %v", r, err)
	}
	if n := len(sub.messages()); n != 0 {
		t.Errorf("%d submits", n)
	}
}

func TestListenAndServeAddr(t *testing.T) {
	l := testListener()
	l.Addr = "127.0.0.1:0"
	s, err := New(l, newRelay(newChain(t, pipeline.ChainOptions{}), &fakeSub{}), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	if s.Addr() != nil {
		t.Error("Addr before serving")
	}
	done := make(chan error, 1)
	go func() { done <- s.ListenAndServe() }()
	testutil.WaitFor(t, "listening", func() bool { return s.Addr() != nil })
	c := dialReady(t, s.Addr().String())
	c.ehlo()
	if err := s.Serve(mustListen(t)); err == nil || errors.Is(err, ErrServerClosed) {
		t.Errorf("second Serve: %v", err)
	}
	s.Close()
	if err := <-done; !errors.Is(err, ErrServerClosed) {
		t.Errorf("ListenAndServe: %v", err)
	}
	c.expectClosed()
	if err := s.Close(); !errors.Is(err, ErrServerClosed) {
		t.Errorf("second Close: %v", err)
	}
}

func TestImplicitTLSBusy(t *testing.T) {
	crt := testutil.SelfSignedCert(t, "mx.sluice.test", "127.0.0.1")
	cert, err := tls.LoadX509KeyPair(crt.CertFile, crt.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	l := testListener()
	l.ImplicitTLS = true
	l.MaxConnections = 1
	ts := startServer(t, l, newChain(t, pipeline.ChainOptions{}), &fakeSub{},
		WithTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}))

	dialTLS := func() *client {
		tc, err := tls.Dial("tcp", ts.addr, crt.ClientTLS("mx.sluice.test"))
		if err != nil {
			t.Fatal(err)
		}
		return newClient(t, tc)
	}
	c1 := dialTLS()
	c1.expect(220)
	c2 := dialTLS()
	if r := c2.expect(421); r.Text() != "4.3.2 Too many connections, try again later" {
		t.Errorf("second TLS connection: %v", r)
	}
	c2.expectClosed()
	c1.ehlo()
}
