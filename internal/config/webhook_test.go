package config

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

const whSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

func TestWebhooksParsed(t *testing.T) {
	t.Setenv("WH_SECRET", whSecret)
	cfg, err := Parse("pipeline.lua", []byte(`sluice.events { file = "/var/ev/events.jsonl", webhooks = {
  { name = "billing", url = "https://billing.example/hooks", secret = sluice.env("WH_SECRET"),
    types = { "delivered", "bounced" }, tenants = { "acme", "" }, timeout = "3s",
    dead_letter_after = "2h", dead_letter = "/var/dead/billing.jsonl", concurrency = 8 },
  { name = "all", url = "http://127.0.0.1:8080/", secret = "`+whSecret+`" },
} }`))
	if err != nil {
		t.Fatal(err)
	}
	want := []Webhook{
		{Name: "billing", URL: "https://billing.example/hooks", Secret: whSecret, Types: []string{"delivered", "bounced"},
			Tenants: []string{"acme", ""}, Timeout: 3 * time.Second, DeadLetterAfter: 2 * time.Hour,
			DeadLetter: "/var/dead/billing.jsonl", Concurrency: 8},
		{Name: "all", URL: "http://127.0.0.1:8080/", Secret: whSecret, Timeout: 10 * time.Second,
			DeadLetterAfter: 24 * time.Hour, DeadLetter: filepath.Join("/var/ev", "webhook-all.dead.jsonl"), Concurrency: 4},
	}
	if !reflect.DeepEqual(cfg.Events.Webhooks, want) {
		t.Errorf("webhooks\n %+v\nwant\n %+v", cfg.Events.Webhooks, want)
	}
}

func TestWebhookErrors(t *testing.T) {
	const ok = `name = "a", url = "https://x.test/", secret = "` + whSecret + `"`
	for _, tc := range []struct{ name, src, want string }{
		{"unknown key", `{ ` + ok + `, retries = 3 }`, `unknown key "webhooks[1].retries"`},
		{"not a table", `"x"`, `key "webhooks[1]": want a table`},
		{"no name", `{ url = "https://x.test/", secret = "` + whSecret + `" }`, `key "webhooks[1].name": is required`},
		{"two names", `{ ` + ok + ` }, { ` + ok + ` }`, `key "webhooks[2].name": "a" names two webhooks`},
		{"no url", `{ name = "a", secret = "` + whSecret + `" }`, `key "webhooks[1].url": is required`},
		{"bad url", `{ name = "a", url = "x.test", secret = "` + whSecret + `" }`, `key "webhooks[1].url": want an absolute http://`},
		{"no secret", `{ name = "a", url = "https://x.test/" }`, `key "webhooks[1].secret": is required`},
		{"bad type", `{ ` + ok + `, types = { "sent" } }`, `unknown event type "sent"`},
		{"bad timeout", `{ ` + ok + `, timeout = "soon" }`, `key "webhooks[1].timeout"`},
		{"bad concurrency", `{ ` + ok + `, concurrency = 0 }`, `must be from 1 to 256`},
	} {
		_, err := Parse("pipeline.lua", []byte(`sluice.events { webhooks = { `+tc.src+` } }`))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	// A wrong secret is refused without printing it.
	_, err := Parse("pipeline.lua", []byte(`sluice.events { webhooks = { { name = "a", url = "https://x.test/", secret = "hunter2-hunter2" } } }`))
	if err == nil || !strings.Contains(err.Error(), `want "whsec_"`) || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("bad secret: %v", err)
	}
}
