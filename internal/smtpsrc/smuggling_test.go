package smtpsrc

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

// smugglingCases are end-of-data look-alikes from the SMTP smuggling
// research (SEC Consult, 2023) and the ones in the issue. Each is sent
// inside one DATA, followed by a complete second transaction and then the
// real CRLF.CRLF, in one write.
//
// hidden marks sequences that go-smtp's dot-unstuffing rewrites before our
// Data sees them: at the start of a line it deletes the '.' and also a CR
// that follows it, so "\r\n.\rMAIL" arrives as "\r\nMAIL" and
// "\r\n.\r\r\n" as "\r\n\r\n". The data we get then has only CRLF line
// endings. On clear-text connections the raw-stream detector in
// trackedConn.Read still sees the sequence, so reject mode refuses these
// too; under TLS (where only go-smtp sees the plain bytes) they are
// accepted as one message whose spooled data has no bare CR or LF.
var smugglingCases = []struct {
	name   string
	seq    string
	nul    bool
	hidden bool
}{
	{name: "LF.LF", seq: "\n.\n"},
	{name: "LF.CRLF", seq: "\n.\r\n"},
	{name: "CR.CRLF", seq: "\r.\r\n"},
	{name: "CRLF.CR", seq: "\r\n.\r", hidden: true},
	{name: "CRLF.LF", seq: "\r\n.\n"},
	{name: "LF.CR", seq: "\n.\r"},
	{name: "CR.LF", seq: "\r.\n"},
	{name: "CR.CR", seq: "\r.\r"},
	{name: "CRLF.CRCRLF", seq: "\r\n.\r\r\n", hidden: true},
	// go-smtp does not end DATA here although the bytes contain CRLF.CRLF
	// (its state machine drops the first CR's state); the bare CR remains.
	{name: "CRCRLF.CRLF", seq: "\r\r\n.\r\n"},
	{name: "CRLF-NUL.CRLF", seq: "\r\n\x00.\r\n", nul: true},
	{name: "CRLF.NUL-CRLF", seq: "\r\n.\x00\r\n", nul: true},
	{name: "CRLF-NUL-.-NUL-CRLF", seq: "\r\n\x00.\x00\r\n", nul: true},
}

const smuggled = "MAIL FROM:<ceo@local.test>\r\nRCPT TO:<victim@local.test>\r\nDATA\r\n" +
	"From: ceo@local.test\r\nSubject: smuggled\r\n\r\nSMUGGLED BODY\r\n"

func TestSmuggling(t *testing.T) {
	for _, mode := range []string{BareReject, BareNormalize} {
		for _, tc := range smugglingCases {
			t.Run(mode+"/"+tc.name, func(t *testing.T) {
				l := testListener()
				l.BareLineEnding = mode
				sub := &fakeSub{}
				ts := startServer(t, l, newChain(t, pipeline.ChainOptions{}), sub)
				c := dialReady(t, ts.addr)
				c.ehlo()
				c.cmd("MAIL FROM:<a@local.test>", 250)
				c.cmd("RCPT TO:<bob@local.test>", 250)
				c.cmd("DATA", 354)
				c.write("From: a@local.test\r\nSubject: first\r\n\r\nHello" + tc.seq + smuggled + "TRAILER\r\n.\r\n")
				r, err := c.read()
				if err != nil {
					t.Fatal(err)
				}
				// Whatever happened, the next reply must answer our QUIT:
				// no reply to a smuggled command may be in between.
				c.write("QUIT\r\n")
				c.expect(221)
				msgs := sub.messages()
				if len(msgs) > 1 {
					t.Fatalf("%d messages from one DATA: %+v", len(msgs), msgs)
				}
				wantReject := tc.nul || mode == BareReject
				if wantReject {
					if r.Code != 554 || !strings.HasPrefix(r.Text(), "5.6.0 ") {
						t.Errorf("reply %v, want 554 5.6.0", r)
					}
					if len(msgs) != 0 {
						t.Errorf("%d submits, want 0", len(msgs))
					}
					// One "rejected" event per refused recipient.
					if rj := sub.rejections(); len(rj) != 1 || rj[0].Rcpt != "bob@local.test" || rj[0].Reply.Code != 554 {
						t.Errorf("Rejected calls %+v", rj)
					}
					return
				}
				if r.Code != 250 || len(msgs) != 1 {
					t.Fatalf("reply %v, %d submits; want 250 and one message", r, len(msgs))
				}
				data := msgs[0].Data
				if bare, nul, _ := scanData(data); bare || nul {
					t.Errorf("submitted data has bare CR/LF or NUL: %q", data)
				}
				// It did not end early: the smuggled text and the trailer
				// are inside the one message.
				if !bytes.Contains(data, []byte("SMUGGLED BODY\r\nTRAILER\r\n")) || !bytes.HasSuffix(data, []byte("TRAILER\r\n")) {
					t.Errorf("message ended early or lost data: %q", data)
				}
				if len(msgs[0].Rcpts) != 1 || msgs[0].Rcpts[0] != "bob@local.test" {
					t.Errorf("recipients %v", msgs[0].Rcpts)
				}
			})
		}
	}
}

// TestSmugglingExactNormalized pins the bytes normalize mode spools for
// one case: bare LFs become CRLF; nothing else changes.
func TestSmugglingExactNormalized(t *testing.T) {
	l := testListener()
	l.BareLineEnding = BareNormalize
	sub := fixedSub()
	ts := startServer(t, l, newChain(t, pipeline.ChainOptions{}), sub)
	c := dialReady(t, ts.addr)
	c.ehlo()
	r := c.sendMessage("a@local.test", []string{"bob@local.test"}, "Subject: x\r\n\r\nHello\n.\nMAIL FROM:<e@x>\r\nend\rx\r\n")
	if r.Code != 250 {
		t.Fatal(r)
	}
	want := "Received: from client.test ([127.0.0.1]) by mx.sluice.test with ESMTP id\r\n" +
		" ID0002 for <bob@local.test>; Sun, 22 Nov 2026 10:00:00 +0000\r\n" +
		"Subject: x\r\n\r\nHello\r\n.\r\nMAIL FROM:<e@x>\r\nend\r\nx\r\n"
	if got := string(sub.messages()[0].Data); got != want {
		t.Errorf("got\n%q\nwant\n%q", got, want)
	}
}

func ExampleNewID() {
	id := NewID()
	fmt.Println(len(id))
	// Output: 26
}

// A hidden bare CR read ahead together with the next transaction must not
// let that next transaction through: after the refusal the connection
// takes no more mail.
func TestHiddenBareCRPoisonsTheConnection(t *testing.T) {
	sub := &fakeSub{}
	ts := startServer(t, testListener(), newChain(t, pipeline.ChainOptions{}), sub)
	c := dialReady(t, ts.addr)
	c.ehlo()
	c.cmd("MAIL FROM:<a@local.test>", 250)
	c.cmd("RCPT TO:<bob@local.test>", 250)
	c.cmd("DATA", 354)
	// One write: a clean first message, then a whole second transaction
	// whose data hides ".\r" at the start of a line.
	c.write("Subject: one\r\n\r\nclean\r\n.\r\n" +
		"MAIL FROM:<a@local.test>\r\nRCPT TO:<bob@local.test>\r\nDATA\r\n" +
		"Subject: two\r\n\r\nx\r\n.\rHIDDEN\r\n.\r\n")
	for i := 0; i < 6; i++ {
		if _, err := c.read(); err != nil {
			break
		}
	}
	for _, m := range sub.messages() {
		if bytes.Contains(m.Data, []byte("HIDDEN")) {
			t.Fatalf("the message hiding a bare CR was accepted: %q", m.Data)
		}
	}
}
