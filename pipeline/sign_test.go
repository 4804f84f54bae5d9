package pipeline

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// signProbe is a SignHook that records what it saw and prepends a field.
type signProbe struct {
	name string
	saw  []string
	fail error
}

func (s *signProbe) Name() string { return s.name }
func (s *signProbe) Sign(_ context.Context, m *Message) error {
	if s.fail != nil {
		return s.fail
	}
	b, _ := m.Bytes()
	s.saw = append(s.saw, string(b))
	m.Header.AddRaw([]byte("X-Signed-By: " + s.name + "\r\n"))
	return nil
}

// msgEditStage edits at on_message: a header, an auth result, maybe a discard.
type msgEditStage struct{ discard bool }

func (msgEditStage) Name() string { return "edit" }
func (e msgEditStage) OnMessage(context.Context, *Message) (Verdict, error) {
	v := Verdict{}
	if e.discard {
		v = DiscardVerdict("dropped")
	}
	v.Edits.SetHeader("Subject", "edited")
	v.Edits.AuthResults = []AuthResult{{Method: "spf", Result: "pass"}}
	return v, nil
}

// TestSignStepSeesFinalMessage: sign hooks run after every on_message
// stage, wherever they stand in the list, after the
// Authentication-Results field, in stage order; not for a discarded
// message; a failing signer fails the message temporarily.
func TestSignStepSeesFinalMessage(t *testing.T) {
	a, b := &signProbe{name: "a"}, &signProbe{name: "b"}
	ch, err := Compile([]Stage{a, msgEditStage{}, b}, ChainOptions{AuthServID: "mx.test"})
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := ParseMessage(&Txn{}, []byte("Subject: original\r\n\r\nbody\r\n"))
	if _, _, err := ch.Message(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	if len(a.saw) != 1 || len(b.saw) != 1 {
		t.Fatalf("calls: %d, %d", len(a.saw), len(b.saw))
	}
	if !strings.HasPrefix(a.saw[0], "Authentication-Results: mx.test; spf=pass\r\nSubject: edited\r\n") {
		t.Errorf("first signer saw:\n%s", a.saw[0])
	}
	if !strings.HasPrefix(b.saw[0], "X-Signed-By: a\r\n") {
		t.Errorf("second signer did not see the first one's field:\n%s", b.saw[0])
	}
	out, _ := msg.Bytes()
	if !strings.HasPrefix(string(out), "X-Signed-By: b\r\nX-Signed-By: a\r\n") {
		t.Errorf("final message:\n%s", out)
	}

	d := &signProbe{name: "d"}
	ch, _ = Compile([]Stage{msgEditStage{discard: true}, d}, ChainOptions{})
	msg, _ = ParseMessage(&Txn{}, []byte("Subject: x\r\n\r\nbody\r\n"))
	if discard, _, err := ch.Message(context.Background(), msg); err != nil || !discard || len(d.saw) != 0 {
		t.Errorf("discarded: %v %v, signer called %d times", discard, err, len(d.saw))
	}

	ch, _ = Compile([]Stage{&signProbe{name: "f", fail: errors.New("no key")}}, ChainOptions{})
	msg, _ = ParseMessage(&Txn{}, []byte("Subject: x\r\n\r\nbody\r\n"))
	if _, _, err := ch.Message(context.Background(), msg); err == nil || !IsTemporary(err) {
		t.Errorf("failing signer: %v, want a temporary failure", err)
	}
}
