package luahost

import (
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

func testEvent() *pipeline.Event {
	return &pipeline.Event{
		Schema: 1, EventID: "01JEV", Type: pipeline.EventBounced,
		Time:      time.Date(2026, 11, 22, 10, 0, 0, 123e6, time.UTC),
		MessageID: "01JMSG", Recipient: "bob@example.org", Sender: "app@example.com",
		Source: "smtp", Tenant: "acme", Queue: "example.org", Attempt: 3,
		Response:    &pipeline.Response{Code: 550, Enhanced: "5.1.1", Text: "no such user"},
		Remote:      &pipeline.Remote{Host: "mx1.example.org", IP: "192.0.2.1", TLS: "TLS1.3"},
		BounceClass: "InvalidRecipient", Tags: []string{"invoice"},
		Metadata: map[string]string{"order": "1234"}, Size: 2048, Node: "relay-1",
	}
}

func TestEventFields(t *testing.T) {
	st, _, lb := inline(t, `on_event = function(ev)
    assert(ev.schema == 1 and ev.event_id == "01JEV" and ev.type == "bounced")
    assert(ev.time == "2026-11-22T10:00:00.123Z", ev.time)
    assert(ev.message_id == "01JMSG" and ev.recipient == "bob@example.org" and ev.sender == "app@example.com")
    assert(ev.source == "smtp" and ev.tenant == "acme" and ev.queue == "example.org" and ev.attempt == 3)
    assert(ev.response.code == 550 and ev.response.enhanced == "5.1.1" and ev.response.text == "no such user")
    assert(ev.remote.host == "mx1.example.org" and ev.remote.ip == "192.0.2.1" and ev.remote.tls == "TLS1.3")
    assert(ev.bounce_class == "InvalidRecipient" and ev.tags[1] == "invoice" and ev.metadata.order == "1234")
    assert(ev.size == 2048 and ev.node == "relay-1")
    sluice.log.info("event seen", { type = ev.type })
    return "ignored"
  end`)
	if err := st.(pipeline.EventHook).OnEvent(bg, testEvent()); err != nil {
		t.Fatal(err)
	}
	if want := "event seen"; !strings.Contains(lb.String(), want) {
		t.Fatalf("log lacks %q", want)
	}

	ev := testEvent()
	ev.Response, ev.Remote = nil, nil
	st, _, _ = inline(t, `on_event = function(ev)
    assert(ev.response == nil and ev.remote == nil)
  end`)
	if err := st.(pipeline.EventHook).OnEvent(bg, ev); err != nil {
		t.Fatal(err)
	}
}

func TestEventReadOnly(t *testing.T) {
	st, _, _ := inline(t, "on_event = function(ev)\n  ev.type = \"delivered\"\nend")
	err := st.(pipeline.EventHook).OnEvent(bg, testEvent())
	wantErrContains(t, err, "pipeline.lua:4", "ev is read-only")
	st, _, _ = inline(t, "on_event = function(ev)\n  setmetatable(ev, nil)\nend")
	err = st.(pipeline.EventHook).OnEvent(bg, testEvent())
	wantErrContains(t, err, "cannot change a protected metatable")
}
