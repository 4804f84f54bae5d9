package loadgen

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// A pipelined raw session against the raw sink: replies come back in order,
// ".\n" and dot-stuffed lines are content, only CRLF.CRLF ends the data.
func TestRawSinkProtocol(t *testing.T) {
	tr := NewTracker("r9", 5)
	tr.Reset(time.Now())
	s, err := StartSink("127.0.0.1:0", SinkRaw, tr)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := net.Dial("tcp", s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	codes := func(n int) []string {
		var out []string
		for len(out) < n {
			l, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("read: %v (got %v)", err, out)
			}
			if l[3] == ' ' {
				out = append(out, l[:3])
			}
		}
		return out
	}
	if got := codes(1); got[0] != "220" {
		t.Fatal(got)
	}
	c.Write([]byte("EHLO x\r\nDATA\r\nRCPT TO:<a@b>\r\nMAIL FROM:<a@b>\r\nRCPT TO:<b@c>\r\nDATA\r\n"))
	if got := strings.Join(codes(6), " "); got != "250 503 503 250 250 354" {
		t.Fatal(got)
	}
	c.Write([]byte("Received: by relay\r\nsubject: bench 2 r9\r\n\r\nline\r\n.\n..stuffed\r\n.\r\nNOOP\r\nRSET\r\nBOGUS\r\nQUIT\r\n"))
	if got := strings.Join(codes(5), " "); got != "250 250 250 502 221" {
		t.Fatal(got)
	}
	st := tr.Stats()
	if st.Total != 1 || st.Distinct != 1 {
		t.Fatalf("%+v", st)
	}
}

// The go-smtp client (no pipelining, dot-stuffing) works against both sinks.
func TestSinksWithGoSMTPClient(t *testing.T) {
	for _, impl := range []string{SinkRaw, SinkGoSMTP} {
		tr := NewTracker("", 0)
		s, err := StartSink("127.0.0.1:0", impl, tr)
		if err != nil {
			t.Fatal(err)
		}
		c, err := smtp.Dial(s.Addr)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 3; i++ {
			msg := "Subject: hi\r\n\r\n.leading dot\r\nbody\r\n"
			if err := c.SendMail("a@x.test", []string{"b@y.test", "c@y.test"}, strings.NewReader(msg)); err != nil {
				t.Fatalf("%s: %v", impl, err)
			}
		}
		if err := c.Quit(); err != nil {
			t.Fatalf("%s: quit: %v", impl, err)
		}
		s.Close()
		if st := tr.Stats(); st.Total != 3 {
			t.Fatalf("%s: %+v", impl, st)
		}
	}
	if _, err := StartSink("127.0.0.1:0", "nope", NewTracker("", 0)); err == nil {
		t.Fatal("unknown impl accepted")
	}
}

func TestSMTPInterrupted(t *testing.T) {
	ln := sinkListener(t)
	relay := startRelay(t, ln.Addr().String())
	ctx, cancel := context.WithCancel(context.Background())
	relay.onData = func() error {
		cancel()
		return nil
	}
	rep, err := RunSMTP(ctx, smtpCfg(relay.addr, 100, 2, 500),
		RunConfig{Sink: SinkConfig{Listener: ln}, Timeout: 10 * time.Second})
	if !errors.Is(err, ErrRunFailed) {
		t.Fatalf("err = %v", err)
	}
	if rep.NotSent == 0 || rep.Attempted+rep.NotSent != 100 || rep.Attempted > 4 {
		t.Fatalf("report %+v", rep)
	}
}

// BenchmarkSMTPDirect drives the generator straight into the raw sink: the
// instrument's own ceiling and its allocations per message.
func BenchmarkSMTPDirect(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	cfg := smtpCfg(ln.Addr().String(), b.N, 4, 2048)
	b.ReportAllocs()
	b.ResetTimer()
	rep, err := RunSMTP(context.Background(), cfg, RunConfig{Sink: SinkConfig{Listener: ln}, Timeout: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(rep.E2EPerSec, "msgs/s")
}
