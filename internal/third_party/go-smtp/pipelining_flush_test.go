package smtp_test

import (
	"bufio"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// writeCountingListener counts the Write calls on the connections it
// accepts.
type writeCountingListener struct {
	net.Listener
	writes atomic.Int64
}

func (l *writeCountingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &writeCountingConn{Conn: c, n: &l.writes}, nil
}

type writeCountingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *writeCountingConn) Write(b []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(b)
}

func pipeliningServer(t *testing.T) (*writeCountingListener, *backend, net.Conn, *bufio.Reader) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &writeCountingListener{Listener: l}
	be := new(backend)
	s := smtp.NewServer(be)
	s.Domain = "localhost"
	go s.Serve(cl)
	t.Cleanup(func() { s.Close() })
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// A guard against a hang (a reply the server holds), not a timing
	// assertion.
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	return cl, be, c, r
}

func expectReplies(t *testing.T, r *bufio.Reader, prefixes ...string) {
	t.Helper()
	for _, p := range prefixes {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the reply %q: %v", p, err)
		}
		if !strings.HasPrefix(line, p) {
			t.Fatalf("reply %q, want %q...", line, p)
		}
	}
}

// TestServer_pipelinedRepliesOneWrite (sluice): the replies to a group of
// pipelined commands (RFC 2920) go out in one write, not one per reply;
// a client that waits for each reply still gets each at once.
func TestServer_pipelinedRepliesOneWrite(t *testing.T) {
	cl, be, c, r := pipeliningServer(t)
	expectReplies(t, r, "220 ")
	io.WriteString(c, "EHLO localhost\r\n")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(line, "250 ") {
			break
		}
	}

	// Not pipelined: each reply is written when it is due.
	io.WriteString(c, "NOOP\r\n")
	expectReplies(t, r, "250 ")

	before := cl.writes.Load()
	io.WriteString(c, "MAIL FROM:<root@nsa.gov>\r\nRCPT TO:<root@gchq.gov.uk>\r\nDATA\r\n")
	expectReplies(t, r, "250 ", "250 ", "354 ")
	if n := cl.writes.Load() - before; n != 1 {
		t.Errorf("%d writes for the replies to MAIL, RCPT and DATA sent at once, want 1", n)
	}

	before = cl.writes.Load()
	io.WriteString(c, "Hey <3\r\n.\r\nQUIT\r\n")
	expectReplies(t, r, "250 ", "221 ")
	if n := cl.writes.Load() - before; n != 1 {
		t.Errorf("%d writes for the replies to the data and QUIT sent at once, want 1", n)
	}
	if len(be.anonmsgs) != 1 || string(be.anonmsgs[0].Data) != "Hey <3\r\n" {
		t.Fatalf("messages: %+v", be.anonmsgs)
	}
}

// TestServer_heldReplyFlushedBeforeRead (sluice): a reply held because
// more input was buffered is written before the server blocks reading,
// even when what was buffered is only part of the next command: the
// client waiting for it must not wait for ever.
func TestServer_heldReplyFlushedBeforeRead(t *testing.T) {
	_, _, c, r := pipeliningServer(t)
	expectReplies(t, r, "220 ")
	io.WriteString(c, "HELO localhost\r\n")
	expectReplies(t, r, "250 ")
	io.WriteString(c, "MAIL FROM:<root@nsa.gov>\r\nRCPT TO:<root@gc")
	expectReplies(t, r, "250 ") // the reply to MAIL, while RCPT is incomplete
	io.WriteString(c, "hq.gov.uk>\r\n")
	expectReplies(t, r, "250 ")
}
