package config

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/testutil"
)

func TestLoadTLSReporting(t *testing.T) {
	load := func(body string) (*Config, error) {
		t.Helper()
		dir := testutil.TempFiles(t, map[string]string{"pipeline.lua": "local sluice = require(\"sluice\")\n" + body})
		return Load(filepath.Join(dir, "pipeline.lua"))
	}
	cfg, err := load("")
	if err != nil || cfg.TLSReporting != nil {
		t.Fatalf("without the section: %+v %v", cfg.TLSReporting, err)
	}
	cfg, err = load(`sluice.tls_reporting { organization = "Ex", contact = "mailto:p@ex.test" }`)
	if err != nil {
		t.Fatal(err)
	}
	if c := cfg.TLSReporting; !c.Enabled || c.SendAt != time.Hour || c.FlushInterval != 30*time.Second || c.MaxPolicies != 10000 ||
		c.MaxDetails != 100 || c.KeepDays != 7 || c.HTTPTimeout != 30*time.Second || c.Retries != 2 || c.From != "" {
		t.Fatalf("defaults %+v", c)
	}
	cfg, err = load(`sluice.tls_reporting { organization = "Ex", contact = "c", send_at = "23:45", enabled = false,
  from = "r@ex.test", inbound_addresses = { "tlsrpt@ex.test" }, retries = 0 }`)
	if c := cfg.TLSReporting; err != nil || c.SendAt != 23*time.Hour+45*time.Minute || c.Enabled || c.From != "r@ex.test" ||
		len(c.InboundAddresses) != 1 || c.Retries != 0 {
		t.Fatalf("%+v %v", c, err)
	}
	for _, c := range []struct{ body, want string }{
		{`sluice.tls_reporting { contact = "c" }`, `key "organization": is required`},
		{`sluice.tls_reporting { organization = "o" }`, `key "contact": is required`},
		{`sluice.tls_reporting { organization = "o", contact = "c", send_at = "1am" }`, `key "send_at": want a UTC time of day`},
		{`sluice.tls_reporting { organization = "o", contact = "c", from = "Reports <r@ex.test>" }`, `key "from": want a bare address`},
		{`sluice.tls_reporting { organization = "o", contact = "c", inbound_addresses = { "nope" } }`, `key "inbound_addresses": entry 1`},
		{`sluice.tls_reporting { organization = "o", contact = "c", keep_days = 1 }`, `key "keep_days": want 2 to 366`},
		{`sluice.tls_reporting { organization = "o", contact = "c", flush_interval = "10ms" }`, `key "flush_interval": want at least 1s`},
		{`sluice.tls_reporting { organization = "o", contact = "c", rua = "x" }`, `unknown key "rua"`},
	} {
		if _, err := load(c.body); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.body, err, c.want)
		}
	}
}
