package pipeline

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// editStage returns fixed verdicts from on_mail, on_message and on_route.
type editStage struct {
	name                 string
	mail, message, route Verdict
}

func (s *editStage) Name() string { return s.name }
func (s *editStage) OnMail(context.Context, *Txn) (Verdict, error) {
	return s.mail, nil
}
func (s *editStage) OnMessage(context.Context, *Message) (Verdict, error) {
	return s.message, nil
}
func (s *editStage) OnRoute(context.Context, *Message, *Recipient) (Verdict, error) {
	return s.route, nil
}

func withEdits(a Action, e Edits) Verdict { return Verdict{Action: a, Edits: e} }

func TestChainAppliesEdits(t *testing.T) {
	var mailEd, msgEd Edits
	mailEd.AddHeader("X-Early", "1")
	mailEd.SetMeta("k", "v")
	mailEd.AddTag("t1")
	mailEd.SetScratch("spf", "pass")
	msgEd.SetHeader("Subject", "new")
	msgEd.RemoveHeader("X-Drop")
	msgEd.SetMeta("k", "") // delete
	msgEd.AddTag("t1")
	msgEd.AuthResults = []AuthResult{{Method: "spf", Result: "pass", Props: []string{"smtp.mailfrom=a.example"}}}
	st := &editStage{name: "s", mail: withEdits(Continue, mailEd), message: withEdits(Continue, msgEd)}
	ch, err := Compile([]Stage{st}, ChainOptions{AuthServID: "mx.test"})
	if err != nil {
		t.Fatal(err)
	}
	txn := &Txn{Conn: &Conn{}, ID: "1"}
	if err := ch.Mail(context.Background(), txn); err != nil {
		t.Fatal(err)
	}
	if txn.Meta["k"] != "v" || txn.Scratch["spf"] != "pass" || len(txn.Tags) != 1 {
		t.Fatalf("after mail: meta %v scratch %v tags %v", txn.Meta, txn.Scratch, txn.Tags)
	}
	msg, err := ParseMessage(txn, []byte("Subject: old\r\nX-Drop: a\r\nX-Drop: b\r\n\r\nbody\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ch.Message(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	b, _ := msg.Bytes()
	want := "Authentication-Results: mx.test; spf=pass smtp.mailfrom=a.example\r\nSubject: new\r\nX-Early: 1\r\n\r\nbody\r\n"
	if string(b) != want {
		t.Fatalf("message\n%q\nwant\n%q", b, want)
	}
	if _, ok := txn.Meta["k"]; ok || len(txn.Tags) != 1 {
		t.Fatalf("meta %v tags %v", txn.Meta, txn.Tags)
	}
}

// TestChainRefusesRouteEdits: a header or metadata edit at on_route fails
// the stage (a logged temporary failure naming the hook), never dropped.
func TestChainRefusesRouteEdits(t *testing.T) {
	var hdr, meta, scratch Edits
	hdr.AddHeader("X-Route", "1")
	meta.SetMeta("k", "v")
	scratch.SetScratch("k", "v")
	for _, tt := range []struct {
		name string
		e    Edits
		ok   bool
	}{{"header", hdr, false}, {"metadata", meta, false}, {"scratch", scratch, true}} {
		t.Run(tt.name, func(t *testing.T) {
			st := &editStage{name: "routing", route: Verdict{Action: Accept, Route: MX(), Edits: tt.e}}
			ch, _ := Compile([]Stage{st}, ChainOptions{})
			txn := &Txn{Conn: &Conn{}, ID: "1"}
			msg, _ := ParseMessage(txn, []byte("Subject: x\r\n\r\nb\r\n"))
			r, _ := NewRecipient("a@b.example")
			_, _, err := ch.Route(context.Background(), msg, r)
			if tt.ok {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var ee *EditError
			if !errors.As(err, &ee) || ee.Hook != "on_route" || !strings.Contains(err.Error(), "not allowed in on_route") {
				t.Fatalf("err %v", err)
			}
			if msg.Header.Has("X-Route") || txn.Meta["k"] != "" {
				t.Fatal("a refused edit was applied")
			}
			if Reply(err).Code != 451 {
				t.Fatalf("reply %+v", Reply(err))
			}
		})
	}
}

// TestRejectDropsEdits: the edits of a stage that rejects are not applied.
func TestRejectDropsEdits(t *testing.T) {
	var e Edits
	e.SetMeta("k", "v")
	st := &editStage{name: "s", mail: Verdict{Action: Reject, Edits: e}}
	ch, _ := Compile([]Stage{st}, ChainOptions{})
	txn := &Txn{Conn: &Conn{}, ID: "1"}
	if err := ch.Mail(context.Background(), txn); err == nil || txn.Meta["k"] != "" {
		t.Fatalf("err %v meta %v", err, txn.Meta)
	}
}

func TestEditsValidated(t *testing.T) {
	for _, e := range []Edits{
		{Headers: []HeaderEdit{{Op: HeaderAdd, Name: "Bad Name", Value: "x"}}},
		{Headers: []HeaderEdit{{Op: HeaderAdd, Name: "X-A", Value: "a\r\nBcc: v@x"}}},
		{Headers: []HeaderEdit{{Op: "prepend", Name: "X-A"}}},
		{Meta: map[string]string{"k": "a\nb"}},
		{Tags: []string{""}},
		{AuthResults: []AuthResult{{Method: "spf pass", Result: "x"}}},
	} {
		if err := ApplyEdits("s", "on_message", &e, &Txn{}, &Message{Txn: &Txn{}}); err == nil {
			t.Errorf("%+v accepted", e)
		}
	}
}
