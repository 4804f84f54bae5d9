package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestTokensConfig(t *testing.T) {
	dir := t.TempDir()
	load := func(body string) (*Config, error) {
		p := filepath.Join(dir, "pipeline.lua")
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return Load(p)
	}
	cfg, err := load(`sluice.tokens { signing_key = "keys/s.secret", public_keys = { "keys/old.public" }, max_lifetime = "10m" }`)
	if err != nil {
		t.Fatal(err)
	}
	tk := cfg.Tokens
	if tk.SigningKey != filepath.Join(dir, "keys/s.secret") || len(tk.PublicKeys) != 1 || tk.PublicKeys[0] != filepath.Join(dir, "keys/old.public") ||
		tk.MaxLifetime != 10*time.Minute || !tk.Enabled() {
		t.Fatalf("tokens %+v", tk)
	}
	if cfg, err := load(`sluice.node { name = "n" }`); err != nil || cfg.Tokens.Enabled() || cfg.Tokens.MaxLifetime != 15*time.Minute {
		t.Fatalf("default: %+v %v", cfg.Tokens, err)
	}
	for body, want := range map[string]string{
		`sluice.tokens { }`:                                                       "signing_key",
		`sluice.tokens { signing_key = "" }`:                                      "must not be empty",
		`sluice.tokens { public_keys = { "" } }`:                                  "empty",
		`sluice.tokens { signing_key = "k", max_lifetime = "25h" }`:               "at most 24h",
		`sluice.tokens { signing_key = "k", lifetime = "5m" }`:                    "lifetime",
		`sluice.tokens { signing_key = "k" } sluice.tokens { signing_key = "k" }`: "called twice",
	} {
		if _, err := load(body); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", body, err, want)
		}
	}
}
