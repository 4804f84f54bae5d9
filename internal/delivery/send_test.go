package delivery_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// modes runs f with and without pipelining: both paths of Send must give
// the same outcomes.
func modes(t *testing.T, f func(t *testing.T, noPipelining bool)) {
	t.Run("pipelined", func(t *testing.T) { f(t, false) })
	t.Run("lockstep", func(t *testing.T) { f(t, true) })
}

func sinkEnv(t *testing.T, o testutil.SinkOptions, noPipelining bool) (*testutil.Sink, *env, *delivery.Session) {
	t.Helper()
	sk := newSink(t, o)
	e := newEnv(t, sk.Port)
	e.D.NoPipelining = noPipelining
	e.DNS.AddA("example.test", sk.IP)
	s := dial(t, e, pipeline.MX(), "example.test")
	if s.Pipelining() == noPipelining {
		t.Fatalf("Pipelining() = %v with NoPipelining %v", s.Pipelining(), noPipelining)
	}
	return sk, e, s
}

func TestPerRecipientResults(t *testing.T) {
	modes(t, func(t *testing.T, noPipe bool) {
		sk, _, s := sinkEnv(t, testutil.SinkOptions{}, noPipe)
		sk.OnRcpt = func(to string) error {
			switch {
			case strings.HasPrefix(to, "temp"):
				return &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "mailbox busy, try later"}
			case strings.HasPrefix(to, "perm"):
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user here"}
			}
			return nil
		}
		rcpts := []string{"ok@example.test", "temp@example.test", "perm@example.test"}
		data := message(1000)
		per, err := s.Send(context.Background(), "app@sender.test", rcpts, data)
		if err != nil {
			t.Fatal(err)
		}
		if len(per) != 3 || per[0] != nil {
			t.Fatalf("per = %v", per)
		}
		pe := wantPE(t, per[1], 450, "4.2.1")
		if pe.Message != "mailbox busy, try later" {
			t.Fatalf("temp text = %q, want the remote's own", pe.Message)
		}
		pe = wantPE(t, per[2], 550, "5.1.1")
		if pe.Message != "no such user here" {
			t.Fatalf("perm text = %q", pe.Message)
		}
		var re *delivery.ReplyError
		if !errors.As(per[2], &re) || re.Command != "RCPT" || re.Remote.IP != sk.IP || re.Code != 550 {
			t.Fatalf("ReplyError = %+v", re)
		}
		msgs := sk.Messages()
		if len(msgs) != 1 {
			t.Fatalf("sink got %d messages, want 1", len(msgs))
		}
		if !slices.Equal(msgs[0].Rcpts, []string{"ok@example.test"}) || msgs[0].From != "app@sender.test" {
			t.Fatalf("delivered envelope %s -> %v", msgs[0].From, msgs[0].Rcpts)
		}
		if !bytes.Equal(msgs[0].Data, data) {
			t.Fatal("delivered bytes differ from the message")
		}
		if msgs[0].Opts.Size != int64(len(data)) || msgs[0].Opts.Body != "" {
			t.Fatalf("MAIL parameters: SIZE=%d BODY=%q", msgs[0].Opts.Size, msgs[0].Opts.Body)
		}
		if !s.Usable() {
			t.Fatal("session not usable after per-recipient failures")
		}
		// And the next message goes through on the same connection.
		per, err = s.Send(context.Background(), "app@sender.test", []string{"ok2@example.test"}, data)
		if err != nil || per[0] != nil {
			t.Fatalf("second Send = %v, %v", per, err)
		}
		if sk.Conns() != 1 {
			t.Fatalf("%d connections", sk.Conns())
		}
	})
}

func TestNoRecipientAccepted(t *testing.T) {
	modes(t, func(t *testing.T, noPipe bool) {
		sk, _, s := sinkEnv(t, testutil.SinkOptions{}, noPipe)
		sk.OnRcpt = func(to string) error {
			if strings.HasPrefix(to, "bad") {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "unknown"}
			}
			return nil
		}
		per, err := s.Send(context.Background(), "a@sender.test", []string{"bad1@example.test", "bad2@example.test"}, message(100))
		if err != nil {
			t.Fatal(err)
		}
		wantPE(t, per[0], 550, "5.1.1")
		wantPE(t, per[1], 550, "5.1.1")
		if !s.Usable() {
			t.Fatal("not usable after RSET")
		}
		per, err = s.Send(context.Background(), "a@sender.test", []string{"good@example.test"}, message(100))
		if err != nil || per[0] != nil {
			t.Fatalf("next Send = %v, %v", per, err)
		}
		if n := len(sk.Messages()); n != 1 {
			t.Fatalf("sink got %d messages", n)
		}
	})
}

func TestSenderRejected(t *testing.T) {
	modes(t, func(t *testing.T, noPipe bool) {
		sk, _, s := sinkEnv(t, testutil.SinkOptions{}, noPipe)
		sk.OnMail = func(from string) error {
			if from == "spammer@sender.test" {
				return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "sender blocked"}
			}
			return nil
		}
		per, err := s.Send(context.Background(), "spammer@sender.test", []string{"a@example.test", "b@example.test"}, message(100))
		if err != nil {
			t.Fatal(err)
		}
		for i := range per {
			if pe := wantPE(t, per[i], 553, "5.7.1"); pe.Message != "sender blocked" {
				t.Fatalf("per[%d] text %q", i, pe.Message)
			}
		}
		per, err = s.Send(context.Background(), "ok@sender.test", []string{"a@example.test"}, message(100))
		if err != nil || per[0] != nil {
			t.Fatalf("next Send = %v, %v", per, err)
		}
	})
}

func TestDataRejected(t *testing.T) {
	modes(t, func(t *testing.T, noPipe bool) {
		sk, _, s := sinkEnv(t, testutil.SinkOptions{}, noPipe)
		sk.OnRcpt = func(to string) error {
			if strings.HasPrefix(to, "perm") {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "unknown"}
			}
			return nil
		}
		sk.OnData = func(_ *smtp.Conn, r io.Reader) error {
			io.Copy(io.Discard, r)
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "queue full, later"}
		}
		per, err := s.Send(context.Background(), "a@sender.test", []string{"x@example.test", "perm@example.test", "y@example.test"}, message(800))
		if err != nil {
			t.Fatal(err)
		}
		wantPE(t, per[0], 451, "4.3.0")
		wantPE(t, per[1], 550, "5.1.1") // keeps its own RCPT answer
		if pe := wantPE(t, per[2], 451, "4.3.0"); pe.Message != "queue full, later" {
			t.Fatalf("text %q", pe.Message)
		}
		var re *delivery.ReplyError
		if !errors.As(per[0], &re) || re.Command != "end of data" {
			t.Fatalf("ReplyError = %+v", re)
		}
		if !s.Usable() {
			t.Fatal("not usable after a 4xx on DATA")
		}
		sk.OnData = nil
		per, err = s.Send(context.Background(), "a@sender.test", []string{"x@example.test"}, message(100))
		if err != nil || per[0] != nil {
			t.Fatalf("next Send = %v, %v", per, err)
		}
		sk.OnData = func(_ *smtp.Conn, r io.Reader) error {
			io.Copy(io.Discard, r)
			return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "content rejected"}
		}
		per, err = s.Send(context.Background(), "a@sender.test", []string{"x@example.test"}, message(100))
		if err != nil {
			t.Fatal(err)
		}
		wantPE(t, per[0], 554, "5.6.0")
	})
}

func TestDataCommandRefused(t *testing.T) {
	// A 4xx to the DATA command itself (go-smtp's server cannot do this).
	modes(t, func(t *testing.T, noPipe bool) {
		srv := newScripted(t, "127.0.0.2", 0, func(p *peer) {
			p.ehlo("PIPELINING", "ENHANCEDSTATUSCODES")
			p.expect("MAIL FROM:<a@sender.test>")
			if noPipe {
				for p.read() != "" { // drain until the client gives up
				}
				return
			}
			p.expect("RCPT TO:<x@example.test>")
			p.expect("DATA")
			p.send("250 2.1.0 ok")
			p.send("250 2.1.5 ok")
			p.send("451 4.3.1 system busy")
			p.expect("RSET")
			p.send("250 2.0.0 reset")
			if l := p.read(); strings.HasPrefix(l, "QUIT") {
				p.send("221 bye")
			}
		})
		if noPipe {
			// The lockstep client waits for each reply: this server only
			// answers after the whole pipeline, so expect a timeout. This
			// proves the pipelined client really pipelines.
			e := newEnv(t, srv.Port)
			e.D.NoPipelining = true
			e.D.Config.CommandTimeout = 200 * time.Millisecond
			e.DNS.AddA("example.test", "127.0.0.2")
			s := dial(t, e, pipeline.MX(), "example.test")
			_, err := s.Send(context.Background(), "a@sender.test", []string{"x@example.test"}, message(100))
			wantPE(t, err, 451, "4.4.2")
			return
		}
		e := newEnv(t, srv.Port)
		e.DNS.AddA("example.test", "127.0.0.2")
		s := dial(t, e, pipeline.MX(), "example.test")
		per, err := s.Send(context.Background(), "a@sender.test", []string{"x@example.test"}, message(100))
		if err != nil {
			t.Fatal(err)
		}
		wantPE(t, per[0], 451, "4.3.1")
		if !s.Usable() {
			t.Fatal("not usable after RSET")
		}
	})
}

func TestConnectionDropMidData(t *testing.T) {
	modes(t, func(t *testing.T, noPipe bool) {
		sk, _, s := sinkEnv(t, testutil.SinkOptions{}, noPipe)
		sk.OnData = func(c *smtp.Conn, r io.Reader) error {
			buf := make([]byte, 100)
			io.ReadFull(r, buf)
			c.Conn().Close()
			return errors.New("gone")
		}
		per, err := s.Send(context.Background(), "a@sender.test", []string{"x@example.test", "y@example.test"}, message(200_000))
		pe := wantPE(t, err, 451, "4.4.2")
		if !errors.Is(err, delivery.ErrConnection) {
			t.Fatalf("%v does not wrap ErrConnection", err)
		}
		if !strings.Contains(pe.Message, "connection lost") {
			t.Fatalf("message %q", pe.Message)
		}
		for i := range per {
			if per[i] != err {
				t.Fatalf("per[%d] = %v, want the connection error", i, per[i])
			}
		}
		if s.Usable() {
			t.Fatal("usable after a lost connection")
		}
		per, err2 := s.Send(context.Background(), "a@sender.test", []string{"x@example.test"}, message(100))
		wantPE(t, err2, 451, "4.4.2")
		if per[0] == nil {
			t.Fatal("Send on a broken session reported success")
		}
	})
}

func TestServiceClosing421(t *testing.T) {
	srv := newScripted(t, "127.0.0.2", 0, func(p *peer) {
		p.ehlo("PIPELINING")
		p.expect("MAIL FROM:")
		p.expect("RCPT TO:<a@")
		p.expect("RCPT TO:<b@")
		p.expect("DATA")
		p.send("250 ok")
		p.send("550 5.1.1 no such user")
		p.send("421 4.7.0 too many errors, closing")
	})
	e := newEnv(t, srv.Port)
	e.DNS.AddA("example.test", "127.0.0.2")
	s := dial(t, e, pipeline.MX(), "example.test")
	per, err := s.Send(context.Background(), "x@sender.test", []string{"a@example.test", "b@example.test"}, message(100))
	wantPE(t, err, 421, "4.7.0")
	wantPE(t, per[0], 550, "5.1.1")
	wantPE(t, per[1], 421, "4.7.0")
	if s.Usable() {
		t.Fatal("usable after 421")
	}
}

func TestSessionReuse(t *testing.T) {
	modes(t, func(t *testing.T, noPipe bool) {
		sk, _, s := sinkEnv(t, testutil.SinkOptions{}, noPipe)
		for i := 0; i < 3; i++ {
			if !s.Usable() {
				t.Fatalf("not usable before message %d", i)
			}
			per, err := s.Send(context.Background(), "a@sender.test", []string{"b@example.test", "c@example.test"}, message(2048))
			if err != nil || per[0] != nil || per[1] != nil {
				t.Fatalf("message %d: %v, %v", i, per, err)
			}
		}
		if sk.Conns() != 1 || len(sk.Messages()) != 3 || s.Messages() != 3 {
			t.Fatalf("connections %d, messages %d, Messages() %d; want 1, 3, 3", sk.Conns(), len(sk.Messages()), s.Messages())
		}
	})
}

func TestUsableDetectsServerClose(t *testing.T) {
	sk, _, s := sinkEnv(t, testutil.SinkOptions{}, false)
	if !s.Usable() {
		t.Fatal("fresh session not usable")
	}
	sk.Close() // closes every connection
	testutil.WaitFor(t, "Usable() to notice the close", func() bool { return !s.Usable() })
	per, err := s.Send(context.Background(), "a@sender.test", []string{"b@example.test"}, message(100))
	wantPE(t, err, 451, "4.4.2")
	wantPE(t, per[0], 451, "4.4.2")
}

func TestUsableDetectsUnsolicitedReply(t *testing.T) {
	release := make(chan struct{})
	srv := newScripted(t, "127.0.0.2", 0, func(p *peer) {
		p.ehlo("PIPELINING")
		<-release
		p.send("421 4.4.2 idle timeout")
	})
	e := newEnv(t, srv.Port)
	e.DNS.AddA("example.test", "127.0.0.2")
	s := dial(t, e, pipeline.MX(), "example.test")
	if !s.Usable() {
		t.Fatal("fresh session not usable")
	}
	close(release)
	testutil.WaitFor(t, "Usable() to notice the 421", func() bool { return !s.Usable() })
}

func TestUsableOverTLS(t *testing.T) {
	crt := testutil.SelfSignedCert(t, "mx.example.test")
	sk, _, s := sinkEnv(t, testutil.SinkOptions{TLS: crt.TLS}, false)
	if s.Remote().TLS == "" {
		t.Fatal("no TLS")
	}
	for i := 0; i < 3; i++ {
		if !s.Usable() {
			t.Fatalf("TLS session not usable before message %d", i)
		}
		per, err := s.Send(context.Background(), "a@sender.test", []string{"b@example.test"}, message(500))
		if err != nil || per[0] != nil {
			t.Fatalf("Send = %v, %v", per, err)
		}
	}
	sk.Close()
	testutil.WaitFor(t, "Usable() to notice the close", func() bool { return !s.Usable() })
}

func TestSendCancelled(t *testing.T) {
	sk, _, s := sinkEnv(t, testutil.SinkOptions{}, false)
	block := make(chan struct{})
	defer close(block)
	sk.OnData = func(_ *smtp.Conn, r io.Reader) error {
		io.Copy(io.Discard, r)
		<-block
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	time.AfterFunc(150*time.Millisecond, cancel)
	start := time.Now()
	per, err := s.Send(ctx, "a@sender.test", []string{"b@example.test"}, message(100))
	pe := wantPE(t, err, 451, "4.4.2")
	if !strings.Contains(pe.Message, "delivery cancelled during end of data") || !errors.Is(err, context.Canceled) {
		t.Fatalf("message %q", pe.Message)
	}
	if per[0] != err {
		t.Fatalf("per[0] = %v", per[0])
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Send took %v with a 150ms context", d)
	}
	if s.Usable() {
		t.Fatal("usable after a cancelled DATA")
	}
}

func TestDataTimeout(t *testing.T) {
	sk, e, _ := sinkEnv(t, testutil.SinkOptions{}, false)
	e.D.Config.DataTimeout = 150 * time.Millisecond
	s := dial(t, e, pipeline.MX(), "example.test")
	block := make(chan struct{})
	defer close(block)
	sk.OnData = func(_ *smtp.Conn, r io.Reader) error {
		io.Copy(io.Discard, r)
		<-block
		return nil
	}
	_, err := s.Send(context.Background(), "a@sender.test", []string{"b@example.test"}, message(100))
	if pe := wantPE(t, err, 451, "4.4.2"); !strings.Contains(pe.Message, "timeout during end of data") {
		t.Fatalf("message %q", pe.Message)
	}
}

func TestSizeLimit(t *testing.T) {
	sk, _, s := sinkEnv(t, testutil.SinkOptions{MaxMessageBytes: 1000}, false)
	if v, ok := s.Extension("size"); !ok || v != "1000" {
		t.Fatalf("Extension(size) = %q, %v", v, ok)
	}
	per, err := s.Send(context.Background(), "a@sender.test", []string{"b@example.test", "c@example.test"}, message(5000))
	if err != nil {
		t.Fatal(err)
	}
	wantPE(t, per[0], 552, "5.3.4")
	wantPE(t, per[1], 552, "5.3.4")
	if s.Messages() != 0 || len(sk.Messages()) != 0 {
		t.Fatal("an oversized message was sent")
	}
	per, err = s.Send(context.Background(), "a@sender.test", []string{"b@example.test"}, message(500))
	if err != nil || per[0] != nil {
		t.Fatalf("Send = %v, %v", per, err)
	}
}

func TestSMTPUTF8(t *testing.T) {
	t.Run("supported", func(t *testing.T) {
		sk, _, s := sinkEnv(t, testutil.SinkOptions{SMTPUTF8: true}, false)
		per, err := s.Send(context.Background(), "app@sender.test", []string{"jörg@example.test", "bob@example.test"}, message(100))
		if err != nil || per[0] != nil || per[1] != nil {
			t.Fatalf("Send = %v, %v", per, err)
		}
		if m := sk.Messages(); len(m) != 1 || !m[0].Opts.UTF8 {
			t.Fatalf("SMTPUTF8 not requested: %+v", m)
		}
		// ASCII-only envelopes do not ask for it.
		if _, err := s.Send(context.Background(), "app@sender.test", []string{"bob@example.test"}, message(100)); err != nil {
			t.Fatal(err)
		}
		if m := sk.Messages(); m[1].Opts.UTF8 {
			t.Fatal("SMTPUTF8 requested for an ASCII envelope")
		}
	})
	t.Run("unsupported", func(t *testing.T) {
		sk, _, s := sinkEnv(t, testutil.SinkOptions{}, false)
		per, err := s.Send(context.Background(), "app@sender.test", []string{"jörg@example.test", "bob@example.test"}, message(100))
		if err != nil {
			t.Fatal(err)
		}
		wantPE(t, per[0], 553, "5.6.7")
		if per[1] != nil {
			t.Fatalf("ASCII recipient failed: %v", per[1])
		}
		if m := sk.Messages(); len(m) != 1 || !slices.Equal(m[0].Rcpts, []string{"bob@example.test"}) {
			t.Fatalf("sink got %+v", m)
		}
		per, _ = s.Send(context.Background(), "jörg@sender.test", []string{"bob@example.test"}, message(100))
		wantPE(t, per[0], 553, "5.6.7")
	})
}

func TestInvalidAddresses(t *testing.T) {
	sk, _, s := sinkEnv(t, testutil.SinkOptions{}, false)
	per, err := s.Send(context.Background(), "a@sender.test", []string{"ok@example.test", "evil@example.test>\r\nRSET", "", "x<y@example.test"}, message(100))
	if err != nil {
		t.Fatal(err)
	}
	if per[0] != nil {
		t.Fatal(per[0])
	}
	for _, e := range per[1:] {
		wantPE(t, e, 553, "5.1.3")
	}
	per, _ = s.Send(context.Background(), "a@sender.test\r\nDATA", []string{"ok@example.test"}, message(100))
	wantPE(t, per[0], 553, "5.1.7")
	if m := sk.Messages(); len(m) != 1 || len(m[0].Rcpts) != 1 {
		t.Fatalf("sink got %+v", m)
	}
}

func TestNullSenderAndDotStuffing(t *testing.T) {
	modes(t, func(t *testing.T, noPipe bool) {
		sk, _, s := sinkEnv(t, testutil.SinkOptions{}, noPipe)
		data := []byte("Subject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\nmiddle . dot\r\n.\r\nend")
		per, err := s.Send(context.Background(), "", []string{"b@example.test"}, data)
		if err != nil || per[0] != nil {
			t.Fatalf("Send = %v, %v", per, err)
		}
		m := sk.Messages()
		if len(m) != 1 || m[0].From != "" {
			t.Fatalf("sink got %+v", m)
		}
		// The sink sees the message with the final line terminated.
		if want := string(data) + "\r\n"; string(m[0].Data) != want {
			t.Fatalf("delivered %q\nwant      %q", m[0].Data, want)
		}
	})
}

func TestEmptyRecipientList(t *testing.T) {
	sk, _, s := sinkEnv(t, testutil.SinkOptions{}, false)
	per, err := s.Send(context.Background(), "a@sender.test", nil, message(100))
	if err != nil || len(per) != 0 || s.Messages() != 0 || len(sk.Messages()) != 0 {
		t.Fatalf("Send(no rcpts) = %v, %v", per, err)
	}
}

func TestMultilineReplyText(t *testing.T) {
	srv := newScripted(t, "127.0.0.2", 0, func(p *peer) {
		p.ehlo("ENHANCEDSTATUSCODES")
		p.expect("MAIL FROM:")
		p.send("250 2.1.0 ok")
		p.expect("RCPT TO:")
		p.send("550-5.7.1 Our system has detected an unusual rate of\r\n550-5.7.1 unsolicited mail.\x01 To reduce spam,\r\n550 5.7.1 see https://example.test/why")
		p.expect("RSET")
		p.send("250 ok")
		if l := p.read(); strings.HasPrefix(l, "QUIT") {
			p.send("221 bye")
		}
	})
	e := newEnv(t, srv.Port)
	e.DNS.AddA("example.test", "127.0.0.2")
	s := dial(t, e, pipeline.MX(), "example.test")
	per, err := s.Send(context.Background(), "a@sender.test", []string{"b@example.test"}, message(100))
	if err != nil {
		t.Fatal(err)
	}
	pe := wantPE(t, per[0], 550, "5.7.1")
	want := "Our system has detected an unusual rate of unsolicited mail. To reduce spam, see https://example.test/why"
	if pe.Message != want {
		t.Fatalf("text %q\nwant %q", pe.Message, want)
	}
}

func TestPipelinedDataAcceptedWithoutRecipients(t *testing.T) {
	// A broken server that says 354 although it refused every RCPT: the
	// client must end the empty DATA and reset, not send the message.
	srv := newScripted(t, "127.0.0.2", 0, func(p *peer) {
		p.ehlo("PIPELINING")
		p.expect("MAIL FROM:")
		p.expect("RCPT TO:")
		p.expect("DATA")
		p.send("250 ok")
		p.send("550 5.1.1 unknown")
		p.send("354 go ahead anyway")
		if l := p.read(); l != "." {
			t.Errorf("after 354 with no recipients got %q, want a lone dot", l)
		}
		p.send("554 5.5.1 no valid recipients")
		p.expect("RSET")
		p.send("250 ok")
		if l := p.read(); strings.HasPrefix(l, "QUIT") {
			p.send("221 bye")
		}
	})
	e := newEnv(t, srv.Port)
	e.DNS.AddA("example.test", "127.0.0.2")
	s := dial(t, e, pipeline.MX(), "example.test")
	per, err := s.Send(context.Background(), "a@sender.test", []string{"b@example.test"}, message(100))
	if err != nil {
		t.Fatal(err)
	}
	wantPE(t, per[0], 550, "5.1.1")
	if !s.Usable() {
		t.Fatal("not usable")
	}
}

func TestCloseSendsQuit(t *testing.T) {
	quit := make(chan string, 1)
	srv := newScripted(t, "127.0.0.2", 0, func(p *peer) {
		p.ehlo()
		quit <- p.read()
		p.send("221 bye")
	})
	e := newEnv(t, srv.Port)
	e.DNS.AddA("example.test", "127.0.0.2")
	s, err := e.D.Dial(context.Background(), pipeline.MX(), "example.test")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if got := <-quit; got != "QUIT" {
		t.Fatalf("server got %q, want QUIT", got)
	}
	if s.Usable() {
		t.Fatal("usable after Close")
	}
}

func BenchmarkSend2KB(b *testing.B) {
	for _, mode := range []struct {
		name   string
		noPipe bool
	}{{"pipelined", false}, {"lockstep", true}} {
		b.Run(mode.name, func(b *testing.B) {
			sk := newSink(b, testutil.SinkOptions{})
			sk.OnData = func(_ *smtp.Conn, r io.Reader) error {
				_, err := io.Copy(io.Discard, r)
				return err
			}
			e := newEnv(b, sk.Port)
			e.D.NoPipelining = mode.noPipe
			e.DNS.AddA("example.test", sk.IP)
			s := dial(b, e, pipeline.MX(), "example.test")
			data := message(2048)
			rcpts := []string{"bob@example.test"}
			ctx := context.Background()
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				per, err := s.Send(ctx, "app@sender.test", rcpts, data)
				if err != nil || per[0] != nil {
					b.Fatalf("Send = %v, %v", per, err)
				}
			}
		})
	}
}

// BenchmarkGoSMTPClient2KB is the reference: go-smtp's own client over one
// reused connection, same sink and message as BenchmarkSend2KB.
func BenchmarkGoSMTPClient2KB(b *testing.B) {
	sk := newSink(b, testutil.SinkOptions{})
	sk.OnData = func(_ *smtp.Conn, r io.Reader) error {
		_, err := io.Copy(io.Discard, r)
		return err
	}
	c, err := smtp.Dial(sk.Addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("sluice.test"); err != nil {
		b.Fatal(err)
	}
	data := message(2048)
	rcpts := []string{"bob@example.test"}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := c.SendMail("app@sender.test", rcpts, bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
	}
}
