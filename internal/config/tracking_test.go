package config

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/testutil"
)

func TestLoadTracking(t *testing.T) {
	load := func(body string) (*Config, error) {
		t.Helper()
		dir := testutil.TempFiles(t, map[string]string{"pipeline.lua": "local sluice = require(\"sluice\")\n" + body})
		return Load(filepath.Join(dir, "pipeline.lua"))
	}
	cfg, err := load("")
	if err != nil || cfg.Tracking.Enabled() {
		t.Fatalf("without the section: %+v %v", cfg.Tracking, err)
	}
	cfg, err = load(`sluice.tracking {
  signing_key = "k/new.key", verify_keys = { "k/old.key" },
  base_url = "https://t.relay.example", clicks = true,
  tenants = { { name = "acme", base_url = "https://t.acme.example/", opens = true, unsubscribe = true } },
  machine_window = "0s", events = "all", text_links = true,
}`)
	if err != nil {
		t.Fatal(err)
	}
	tr := cfg.Tracking
	if !tr.Enabled() || !filepath.IsAbs(tr.SigningKey) || !strings.HasSuffix(tr.SigningKey, "k/new.key") || len(tr.VerifyKeys) != 1 || !filepath.IsAbs(tr.VerifyKeys[0]) {
		t.Errorf("keys: %+v", tr)
	}
	if tr.Default != (TrackingPolicy{BaseURL: "https://t.relay.example", Clicks: true}) || len(tr.Tenants) != 1 ||
		tr.Tenants[0] != (TrackingPolicy{Tenant: "acme", BaseURL: "https://t.acme.example/", Opens: true, Unsubscribe: true}) {
		t.Errorf("policies: %+v %+v", tr.Default, tr.Tenants)
	}
	if tr.MachineWindow != 0 || tr.Events != "all" || !tr.TextLinks || tr.DedupeEntries != 200_000 {
		t.Errorf("options: %+v", tr)
	}
	if cfg, _ = load(`sluice.tracking { signing_key = "k" }`); cfg.Tracking.MachineWindow != 10*time.Second || cfg.Tracking.Events != "first" {
		t.Errorf("defaults: %+v", cfg.Tracking)
	}
	for _, c := range []struct{ body, want string }{
		{`sluice.tracking { base_url = "https://t.example" }`, `key "signing_key": is required`},
		{`sluice.tracking { signing_key = "k", base_url = "t.example" }`, `key "base_url": want https://HOST`},
		{`sluice.tracking { signing_key = "k", base_url = "https://t.example/path" }`, `key "base_url": want https://HOST`},
		{`sluice.tracking { signing_key = "k", tenants = { { base_url = "https://t.example" } } }`, `key "tenants[1].name": is required`},
		{`sluice.tracking { signing_key = "k", tenants = { { name = "a" }, { name = "a" } } }`, `tenant "a" is listed twice`},
		{`sluice.tracking { signing_key = "k", tenants = { { name = "a", host = "x" } } }`, `unknown key "tenants[1].host"`},
		{`sluice.tracking { signing_key = "k", events = "some" }`, `key "events": want "first" or "all"`},
		{`sluice.tracking { signing_key = "k", verify_keys = { "" } }`, `key "verify_keys": entry 1 is empty`},
		{`sluice.tracking { signing_key = "k", opens = "yes" }`, `key "opens"`},
	} {
		if _, err := load(c.body); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.body, err, c.want)
		}
	}
}
