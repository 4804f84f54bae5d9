package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestShapingAndEgressConfig(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "shaping.toml"), []byte("[\"default\"]\nconnection_limit = 4\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bad.toml"), []byte("[\"default\"]\nconection_limit = 4\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	load := func(body string) (*Config, error) {
		p := filepath.Join(dir, "pipeline.lua")
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return Load(p)
	}
	cfg, err := load(`
sluice.shaping { files = { "shaping.toml" } }
sluice.egress {
  sources = {
    { name = "ip2", address = "127.0.0.2", helo = "mta2.example.com" },
    { name = "ip3", address = "::ffff:127.0.0.3",
      warmup = { start = "2026-12-01", steps = { { days = 7, daily = 500 }, { days = 7, daily = 2000 } } } },
  },
  pools = { { name = "A", sources = { "ip2" } }, { name = "AB", sources = { "ip2", "ip3" } } },
  default_pool = "A",
}`)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Shaping.Files[0] != filepath.Join(dir, "shaping.toml") || *cfg.Shaping.Rules.Default.Params.ConnectionLimit != 4 {
		t.Errorf("shaping %+v", cfg.Shaping)
	}
	eg := cfg.Egress
	if len(eg.Sources) != 2 || eg.Sources[0].HELO != "mta2.example.com" || eg.Sources[1].Address.String() != "127.0.0.3" ||
		eg.Sources[1].Warmup.Limit(time.Date(2026, 12, 9, 0, 0, 0, 0, time.UTC)) != 2000 ||
		len(eg.Pools["AB"]) != 2 || eg.DefaultPool != "A" {
		t.Errorf("egress %+v", eg)
	}
	for body, want := range map[string]string{
		`sluice.shaping { }`:                                            "files",
		`sluice.shaping { files = { "missing.toml" } }`:                 "missing.toml",
		`sluice.shaping { files = { "bad.toml" } }`:                     `unknown key "conection_limit"`,
		`sluice.egress { }`:                                             "sources",
		`sluice.egress { sources = { { name = "a" } } }`:                "address",
		`sluice.egress { sources = { { name = "a", address = "x" } } }`: `"x" is not an IP address`,
		`sluice.egress { sources = { { name = "a", address = "127.0.0.2" }, { name = "a", address = "127.0.0.3" } } }`:         "defined twice",
		`sluice.egress { sources = { { name = "a", address = "127.0.0.2" } }, pools = { { name = "P", sources = { "b" } } } }`: `unknown source "b"`,
		`sluice.egress { sources = { { name = "a", address = "127.0.0.2" } }, default_pool = "P" }`:                            "not defined",
		`sluice.egress { sources = { { name = "a", address = "127.0.0.2", warmup = { start = "soon", steps = {} } } } }`:       "YYYY-MM-DD",
		`sluice.egress { sources = { { name = "a", address = "127.0.0.2", helo = "not a name" } } }`:                           "not a host name",
	} {
		if _, err := load(body); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err %v, want %q", body, err, want)
		}
	}
}
