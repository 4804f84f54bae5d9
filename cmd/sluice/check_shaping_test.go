package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckShapingWarnings: `sluice check` prints what a shaping file
// sets that Sluice does not apply (a KumoMTA key it ignores, a provider
// that matches nothing), one "warning:" line each, and still passes; a
// clean file gives none.
func TestCheckShapingWarnings(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "pipeline.lua")
	os.WriteFile(conf, []byte(`local sluice = require("sluice")
sluice.spool { path = "spool" }
sluice.listen_smtp { addr = "127.0.0.1:2525" }
sluice.shaping { files = { "shaping.toml" } }
`), 0o644)
	toml := filepath.Join(dir, "shaping.toml")
	os.WriteFile(toml, []byte("[\"default\"]\nconnection_limit = 3\nehlo_timeout = \"10s\"\n[provider.\"nowhere\"]\nconnection_limit = 2\n"), 0o644)
	out, code := runBin(t, "check", "-c", conf)
	if code != 0 || !strings.Contains(out, "ok (") || !strings.Contains(out, "2 warning(s)") {
		t.Fatalf("check with shaping warnings: exit %d, want 0 and \"2 warning(s)\":\n%s", code, out)
	}
	for _, want := range []string{`shaping.toml: ["default"]: ehlo_timeout is a KumoMTA key that Sluice does not apply; ignored`,
		`warning: shaping: provider "nowhere" has no match`} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	os.WriteFile(toml, []byte("[\"default\"]\nconnection_limit = 3\n"), 0o644)
	if out, code := runBin(t, "check", "-c", conf); code != 0 || strings.Contains(out, "warning") {
		t.Fatalf("clean shaping file: exit %d\n%s", code, out)
	}
}
