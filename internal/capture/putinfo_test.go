package capture

import (
	"context"
	"slices"
	"testing"

	"github.com/sluice-mta/sluice/internal/delivery"
)

// TestCaptureTakesTagsFromEnvelope: a capture delivery records the tags
// and source its envelope carries (the queue's copy of the spooled
// message's) without reading the spool again; an envelope without them
// falls back to Options.MessageInfo.
func TestCaptureTakesTagsFromEnvelope(t *testing.T) {
	looked := 0
	s := open(t, t.TempDir(), Options{MessageInfo: func(id string) ([]string, string) {
		looked++
		return []string{"from-spool"}, "smtp"
	}})
	defer s.Close()
	c := &Conn{s: s, tenant: "acme"}
	data := []byte("Subject: hi\r\n\r\nbody\r\n")
	tags := []string{"welcome", "eu"}
	env := &delivery.Envelope{From: "a@s.test", MsgID: "m1", Tags: tags, Source: "http",
		Rcpts: []delivery.Rcpt{{Addr: "b@d.test", Attempt: 1}}}
	if _, err := c.Deliver(context.Background(), env, data); err != nil {
		t.Fatal(err)
	}
	tags[0] = "changed" // the queue's slice; the summary keeps its own
	env = &delivery.Envelope{From: "a@s.test", MsgID: "m2", Rcpts: []delivery.Rcpt{{Addr: "c@d.test", Attempt: 1}}}
	if _, err := c.Deliver(context.Background(), env, data); err != nil {
		t.Fatal(err)
	}
	p, _ := s.Search("acme", Filter{}, 0, 10)
	if len(p.Messages) != 2 {
		t.Fatalf("%+v", p)
	}
	if m := p.Messages[1]; !slices.Equal(m.Tags, []string{"welcome", "eu"}) || m.Source != "http" {
		t.Fatalf("from the envelope: tags %q source %q", m.Tags, m.Source)
	}
	if m := p.Messages[0]; !slices.Equal(m.Tags, []string{"from-spool"}) || m.Source != "smtp" || looked != 1 {
		t.Fatalf("from MessageInfo: tags %q source %q, looked up %d times (want 1)", m.Tags, m.Source, looked)
	}
}
