package delivery_test

import (
	"context"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/internal/delivery"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// hopEnv starts a strict next hop on 127.0.0.2 offering ext and a Dialer
// whose MX for dest.example points at it, and dials it.
func hopEnv(t *testing.T, ext ...string) (*testutil.Hop, *delivery.Session) {
	t.Helper()
	h := testutil.StartHop(t, testutil.HopOptions{IP: "127.0.0.2", Extensions: ext})
	e := newEnv(t, h.Port)
	e.DNS.AddMX("dest.example", 10, "mx.dest.example")
	e.DNS.AddA("mx.dest.example", h.IP)
	return h, dial(t, e, pipeline.MX(), "dest.example")
}

func deliver(t *testing.T, s *delivery.Session, env *delivery.Envelope, data string) []delivery.Result {
	t.Helper()
	res, err := s.Deliver(context.Background(), env, []byte(data))
	if err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	if len(res) != len(env.Rcpts) {
		t.Fatalf("%d results for %d recipients", len(res), len(env.Rcpts))
	}
	return res
}

const asciiMsg = "From: a@origin.example\r\nSubject: plain\r\n\r\nhello\r\n"
const eightBitMsg = "From: a@origin.example\r\nSubject: caf\xc3\xa9\r\n\r\nna\xc3\xafve\r\n"

// Issue 13 item 1: quoted local parts go out byte for byte, and a strict
// next hop (RFC 5321 grammar) takes them. The delivered result carries
// the hop's own reply.
func TestQuotedAddressesByteIdentical(t *testing.T) {
	for _, pipelining := range []bool{true, false} {
		ext := []string{"ENHANCEDSTATUSCODES"}
		if pipelining {
			ext = append(ext, "PIPELINING")
		}
		h, s := hopEnv(t, ext...)
		env := &delivery.Envelope{From: `"odd sender"@origin.example`, Rcpts: []delivery.Rcpt{
			{Addr: `"odd user"@dest.example`}, {Addr: `"a\"b"@dest.example`}, {Addr: "plain@dest.example"}}}
		res := deliver(t, s, env, asciiMsg)
		for i, r := range res {
			if r.Err != nil {
				t.Fatalf("rcpt %d: %v", i, r.Err)
			}
			if *r.Reply != (pipeline.Response{Code: 250, Enhanced: "2.0.0", Text: "accepted as hop-1"}) {
				t.Errorf("rcpt %d reply = %+v", i, r.Reply)
			}
			if r.DSN {
				t.Errorf("rcpt %d: DSN reported for a hop without DSN", i)
			}
		}
		m := h.Messages()
		if len(m) != 1 {
			t.Fatalf("hop got %d messages", len(m))
		}
		want := []string{`RCPT TO:<"odd user"@dest.example>`, `RCPT TO:<"a\"b"@dest.example>`, `RCPT TO:<plain@dest.example>`}
		if m[0].Mail != `MAIL FROM:<"odd sender"@origin.example>` || strings.Join(m[0].Rcpts, "|") != strings.Join(want, "|") {
			t.Errorf("hop received %q %q", m[0].Mail, m[0].Rcpts)
		}
	}
}

// Issue 13 item 3: 8-bit content never goes raw to a hop without
// 8BITMIME (554 5.6.3, nothing sent); BODY=8BITMIME is declared to a hop
// that offers it, and only for 8-bit content.
func TestEightBitContent(t *testing.T) {
	tests := []struct {
		name, body, data string
		eightBit         bool
	}{
		{"ascii, no BODY", "", asciiMsg, false},
		{"ascii, BODY=7BIT", pipeline.Body7Bit, asciiMsg, false},
		{"8-bit bytes, no BODY", "", eightBitMsg, true},
		{"8-bit bytes, BODY=7BIT (a lie)", pipeline.Body7Bit, eightBitMsg, true},
		{"BODY=8BITMIME", pipeline.Body8BitMIME, eightBitMsg, true},
		// Declared 8BITMIME but all ASCII (Go's net/smtp declares it
		// whenever it is offered): nothing to convert, it goes as is.
		{"BODY=8BITMIME, ascii content", pipeline.Body8BitMIME, asciiMsg, false},
		{"BODY=BINARYMIME", pipeline.BodyBinaryMIME, eightBitMsg, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := &delivery.Envelope{From: "a@origin.example", Params: pipeline.MailParams{Body: tt.body},
				Rcpts: []delivery.Rcpt{{Addr: "b@dest.example"}, {Addr: "c@dest.example"}}}
			// A 7-bit hop.
			h, s := hopEnv(t, "PIPELINING")
			res := deliver(t, s, env, tt.data)
			for _, r := range res {
				if tt.eightBit {
					pe := wantPE(t, r.Err, 554, "5.6.3")
					if !strings.Contains(pe.Message, "8BITMIME") {
						t.Errorf("message %q does not say why", pe.Message)
					}
				} else if r.Err != nil {
					t.Fatalf("7-bit message to a 7-bit hop: %v", r.Err)
				}
			}
			if got := len(h.Messages()); tt.eightBit && (got != 0 || len(h.Commands()) != 1) {
				t.Errorf("8-bit message reached a 7-bit hop: %d messages, commands %q", got, h.Commands())
			}
			if !s.Usable() {
				t.Fatal("session unusable after a local refusal")
			}
			// An 8BITMIME hop.
			h, s = hopEnv(t, "PIPELINING", "8BITMIME")
			for _, r := range deliver(t, s, env, tt.data) {
				if r.Err != nil {
					t.Fatalf("to an 8BITMIME hop: %v", r.Err)
				}
			}
			m := h.Messages()
			if len(m) != 1 || strings.Contains(m[0].Mail, "BODY=8BITMIME") != tt.eightBit || string(m[0].Data) != tt.data {
				t.Errorf("8BITMIME hop got %+v", m)
			}
		})
	}
}

// Issue 13 item 4: SMTPUTF8 is passed on when the hop offers it and the
// message needs it; to a hop without it the message bounces (553 5.6.7),
// it is not downgraded.
func TestSMTPUTF8Required(t *testing.T) {
	env := &delivery.Envelope{From: "a@origin.example", Params: pipeline.MailParams{Body: pipeline.Body8BitMIME, SMTPUTF8: true},
		Rcpts: []delivery.Rcpt{{Addr: "b@dest.example"}}}
	h, s := hopEnv(t, "8BITMIME", "SMTPUTF8")
	if r := deliver(t, s, env, eightBitMsg); r[0].Err != nil {
		t.Fatal(r[0].Err)
	}
	if m := h.Messages(); len(m) != 1 || m[0].Mail != "MAIL FROM:<a@origin.example> BODY=8BITMIME SMTPUTF8" {
		t.Fatalf("hop got %+v", m)
	}
	h, s = hopEnv(t, "8BITMIME")
	pe := wantPE(t, deliver(t, s, env, eightBitMsg)[0].Err, 553, "5.6.7")
	if !strings.Contains(pe.Message, "SMTPUTF8") || len(h.Commands()) != 1 {
		t.Fatalf("refusal %q, hop saw %q", pe.Message, h.Commands())
	}
	// An all-ASCII message that asked for SMTPUTF8 (Go's net/smtp asks
	// whenever it is offered) does not need it: it goes without it.
	h, s = hopEnv(t, "8BITMIME")
	ascii := &delivery.Envelope{From: "a@origin.example", Params: pipeline.MailParams{Body: pipeline.Body8BitMIME, SMTPUTF8: true},
		Rcpts: []delivery.Rcpt{{Addr: "b@dest.example"}}}
	if r := deliver(t, s, ascii, asciiMsg); r[0].Err != nil {
		t.Fatal(r[0].Err)
	}
	if m := h.Messages(); len(m) != 1 || m[0].Mail != "MAIL FROM:<a@origin.example>" {
		t.Fatalf("hop got %+v", m)
	}
	// A non-ASCII recipient needs SMTPUTF8 for itself only.
	env = &delivery.Envelope{From: "a@origin.example", Rcpts: []delivery.Rcpt{{Addr: "jörg@dest.example"}, {Addr: "b@dest.example"}}}
	res := deliver(t, s, env, asciiMsg)
	wantPE(t, res[0].Err, 553, "5.6.7")
	if res[1].Err != nil {
		t.Fatal(res[1].Err)
	}
}

// "Also in this kind": RET/ENVID and NOTIFY/ORCPT (xtext) go to a hop that
// offers DSN, and nothing to a hop that does not; Result.DSN says which.
func TestDSNParameters(t *testing.T) {
	env := &delivery.Envelope{From: "a@origin.example",
		Params: pipeline.MailParams{Ret: "HDRS", EnvID: "id+1 =x"},
		Rcpts: []delivery.Rcpt{
			{Addr: "b@dest.example", Params: pipeline.RcptParams{Notify: []string{"SUCCESS", "FAILURE"}, ORCPT: "rfc822;B+x@dest.example"}},
			{Addr: "c@dest.example", Params: pipeline.RcptParams{Notify: []string{"NEVER"}}},
			{Addr: "d@dest.example"},
		}}
	h, s := hopEnv(t, "PIPELINING", "DSN")
	for i, r := range deliver(t, s, env, asciiMsg) {
		if r.Err != nil || !r.DSN {
			t.Fatalf("rcpt %d: %+v", i, r)
		}
	}
	m := h.Messages()
	want := []string{
		"RCPT TO:<b@dest.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;B+2Bx@dest.example",
		"RCPT TO:<c@dest.example> NOTIFY=NEVER",
		"RCPT TO:<d@dest.example>",
	}
	if len(m) != 1 || m[0].Mail != "MAIL FROM:<a@origin.example> RET=HDRS ENVID=id+2B1+20+3Dx" || strings.Join(m[0].Rcpts, "|") != strings.Join(want, "|") {
		t.Fatalf("hop got %q %q", m[0].Mail, m[0].Rcpts)
	}

	h, s = hopEnv(t, "PIPELINING")
	for i, r := range deliver(t, s, env, asciiMsg) {
		if r.Err != nil || r.DSN {
			t.Fatalf("rcpt %d: %+v", i, r)
		}
	}
	if m := h.Messages(); len(m) != 1 || m[0].Mail != "MAIL FROM:<a@origin.example>" || strings.Contains(strings.Join(m[0].Rcpts, ""), "NOTIFY") {
		t.Fatalf("hop without DSN got %+v", m)
	}
}

// RFC 5321 section 4.5.3.1.10: a 552 to RCPT is treated as 452.
func TestRcpt552IsTemporary(t *testing.T) {
	modes(t, func(t *testing.T, noPipe bool) {
		sk, _, s := sinkEnv(t, testutil.SinkOptions{}, noPipe)
		sk.OnRcpt = func(to string) error {
			switch to {
			case "many@example.test":
				return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 5, 3}, Message: "too many recipients"}
			case "bare@example.test":
				return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.NoEnhancedCode, Message: "too many recipients"}
			case "full@example.test":
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 2, 2}, Message: "mailbox full"}
			}
			return nil
		}
		per, err := s.Send(context.Background(), "a@sender.test", []string{"ok@example.test", "many@example.test", "bare@example.test", "full@example.test"}, message(100))
		if err != nil || per[0] != nil {
			t.Fatalf("Send = %v, %v", per, err)
		}
		wantPE(t, per[1], 452, "4.5.3")
		wantPE(t, per[2], 452, "4.5.3")
		wantPE(t, per[3], 550, "5.2.2")
	})
}
