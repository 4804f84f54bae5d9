package smtpsrc

import (
	"fmt"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

// A pipelining client sends a message with a too-long line and the next
// message in one write: each command gets exactly one reply, the refusal
// comes after the end of data, and the next message is accepted (issue 13
// item 6).
func TestPipelinedTooLongLine(t *testing.T) {
	l := testListener()
	l.MaxLineLength = 100
	sub := &fakeSub{}
	ts := startServer(t, l, newChain(t, pipeline.ChainOptions{}), sub)
	c := dialReady(t, ts.addr)
	c.ehlo()
	long := simpleMsg + strings.Repeat("a", 1200) + "\r\nmore\r\n" // over the command line bound too
	c.write("MAIL FROM:<a@local.test>\r\nRCPT TO:<bob@local.test>\r\nDATA\r\n" + long + ".\r\n" +
		"MAIL FROM:<a@local.test>\r\nRCPT TO:<bob@local.test>\r\nDATA\r\n" + simpleMsg + ".\r\n" +
		"NOOP\r\n")
	var got []string
	for range 9 {
		r, err := c.read()
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		got = append(got, fmt.Sprint(r.Code))
	}
	if s := strings.Join(got, " "); s != "250 250 354 554 250 250 354 250 250" {
		t.Fatalf("replies %s", s)
	}
	if n := len(sub.messages()); n != 1 {
		t.Errorf("%d submits", n)
	}
}

// A command line over the limit is answered once, after its end; the
// next command is read in step.
func TestTooLongCommandLine(t *testing.T) {
	sub := &fakeSub{}
	ts := startServer(t, testListener(), newChain(t, pipeline.ChainOptions{}), sub)
	c := dialReady(t, ts.addr)
	c.ehlo()
	c.write("MAIL FROM:<" + strings.Repeat("a", 1200) + "@local.test>\r\nNOOP\r\n")
	if r := c.expect(500); r.Text() != "5.5.2 Line too long" {
		t.Errorf("long command: %v", r)
	}
	c.expect(250)
	if r := c.sendMessage("a@local.test", []string{"bob@local.test"}, simpleMsg); r.Code != 250 {
		t.Fatal(r)
	}
}

// A BDAT chunk boundary inside a 995-octet line: line limits apply to the
// message's lines, not to chunks (issue 13 item 8). The chunk and the next
// BDAT command are written at once, so go-smtp reads them together.
func TestBDATChunkBoundaryInLongLine(t *testing.T) {
	sub := &fakeSub{}
	ts := startServer(t, testListener(), newChain(t, pipeline.ChainOptions{}), sub)
	c := dialReady(t, ts.addr)
	c.ehlo()
	line := strings.Repeat("x", 993) + "\r\n" // 995 octets
	msg := simpleMsg + line + line
	for _, cut := range []int{len(simpleMsg) + 10, len(simpleMsg) + 990, len(simpleMsg) + 994, len(simpleMsg) + 995 + 500} {
		p1, p2 := msg[:cut], msg[cut:]
		c.write(fmt.Sprintf("MAIL FROM:<a@local.test>\r\nRCPT TO:<bob@local.test>\r\nBDAT %d\r\n%sBDAT %d LAST\r\n%s",
			len(p1), p1, len(p2), p2))
		c.expect(250)
		c.expect(250)
		c.expect(250)
		if r := c.expect(250); !strings.HasPrefix(r.Text(), "2.0.0 OK: queued as ") {
			t.Fatalf("cut at %d: %v", cut, r)
		}
	}
	c.cmd("NOOP", 250)
	msgs := sub.messages()
	if len(msgs) != 4 || !strings.HasSuffix(string(msgs[3].Data), msg) {
		t.Fatalf("%d submits", len(msgs))
	}
	// Over the limit across a boundary: one 554, after BDAT LAST.
	over := simpleMsg + strings.Repeat("y", 1100) + "\r\n"
	p1, p2 := over[:len(simpleMsg)+600], over[len(simpleMsg)+600:]
	c.write(fmt.Sprintf("MAIL FROM:<a@local.test>\r\nRCPT TO:<bob@local.test>\r\nBDAT %d\r\n%sBDAT %d LAST\r\n%sNOOP\r\n",
		len(p1), p1, len(p2), p2))
	c.expect(250)
	c.expect(250)
	c.expect(250)
	if r := c.expect(554); !strings.HasPrefix(r.Text(), "5.6.0 ") {
		t.Errorf("long line over BDAT: %v", r)
	}
	c.expect(250)
}

// A BDAT transfer abandoned with RSET, then the next message over BDAT on
// the same connection: its reply must be the outcome of its own commit
// (issue 13 item 9: the abandoned transfer's 451 used to answer it now
// and then, although it was queued). Repeated to catch the race.
func TestBDATResetRace(t *testing.T) {
	sub := &fakeSub{}
	ts := startServer(t, testListener(), newChain(t, pipeline.ChainOptions{}), sub)
	c := dialReady(t, ts.addr)
	c.ehlo()
	const rounds = 300
	for i := range rounds {
		p1 := simpleMsg[:10]
		c.write(fmt.Sprintf("MAIL FROM:<a@local.test>\r\nRCPT TO:<bob@local.test>\r\nBDAT %d\r\n%sRSET\r\n"+
			"MAIL FROM:<a@local.test>\r\nRCPT TO:<bob@local.test>\r\nBDAT %d LAST\r\n%s",
			len(p1), p1, len(simpleMsg), simpleMsg))
		for j := range 6 {
			if r := c.expect(250); j == 2 && !strings.HasPrefix(r.Text(), "2.0.0 Chunk") {
				t.Fatalf("round %d: chunk: %v", i, r)
			}
		}
		r, err := c.read()
		if err != nil {
			t.Fatal(err)
		}
		if n := len(sub.messages()); r.Code != 250 || n != i+1 {
			t.Fatalf("round %d: reply %v with %d messages committed", i, r, n)
		}
	}
}

// A message that has passed max_hops MTAs is refused (a mail loop): 554
// 5.4.6 after the end of data; one hop fewer is accepted.
func TestMaxHops(t *testing.T) {
	l := testListener()
	l.MaxHops = 5
	sub := &fakeSub{}
	ts := startServer(t, l, newChain(t, pipeline.ChainOptions{}), sub)
	c := dialReady(t, ts.addr)
	c.ehlo()
	hops := func(n int) string {
		return strings.Repeat("Received: from a.example by b.example; Mon, 30 Nov 2026 05:00:00 +0000\r\n", n) + simpleMsg
	}
	if r := c.sendMessage("a@local.test", []string{"bob@local.test"}, hops(4)); r.Code != 250 {
		t.Errorf("4 hops: %v", r)
	}
	if r := c.sendMessage("a@local.test", []string{"bob@local.test"}, hops(5)); r.Code != 554 || r.Text() != "5.4.6 Too many hops (Received fields): mail loop?" {
		t.Errorf("5 hops: %v", r)
	}
	c.cmd("NOOP", 250)
	if n := len(sub.messages()); n != 1 {
		t.Errorf("%d submits", n)
	}
	if rj := sub.rejections(); len(rj) != 1 || rj[0].Reply.Code != 554 {
		t.Errorf("rejections %+v", rj)
	}
}

// TestCommandReplyCodes: the codes RFC 5321 gives for an unrecognised
// command (500), an unknown MAIL/RCPT parameter (555) and a MAIL inside a
// transaction (503).
func TestCommandReplyCodes(t *testing.T) {
	ts := startServer(t, testListener(), newChain(t, pipeline.ChainOptions{}), &fakeSub{})
	c := dialReady(t, ts.addr)
	c.ehlo()
	if r := c.cmd("FOOBAR x", 500); r.Text() != "5.5.2 Command unrecognized" {
		t.Errorf("unknown command: %v", r)
	}
	c.cmd("MAIL FROM:<a@local.test> FOO=BAR", 555)
	c.cmd("MAIL FROM:<a@local.test>", 250)
	c.cmd("RCPT TO:<bob@local.test> FOO=BAR", 555)
	if r := c.cmd("MAIL FROM:<b@local.test>", 503); r.Text() != "5.5.1 Nested MAIL command" {
		t.Errorf("nested MAIL: %v", r)
	}
	c.cmd("RCPT TO:<bob@local.test>", 250) // the first transaction goes on
	c.cmd("RSET", 250)
	c.cmd("MAIL FROM:<b@local.test>", 250)
	c.cmd("QUIT", 221)
}
