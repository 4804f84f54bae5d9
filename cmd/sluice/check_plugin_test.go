package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckQuotesPluginStderr: when a plugin fails at start, sluice check
// prints the end of its stderr and its exit status, not only go-plugin's
// text (issue 16 review, finding 4).
func TestCheckQuotesPluginStderr(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "faulty")
	if out, err := exec.Command("go", "build", "-o", bin, "../../internal/plugin/testdata/faulty").CombinedOutput(); err != nil {
		t.Fatalf("building the test plugin: %v\n%s", err, out)
	}
	cfg := filepath.Join(dir, "plugin.lua")
	os.WriteFile(cfg, []byte(`local sluice = require("sluice")
sluice.listen_smtp { addr = "127.0.0.1:0" }
sluice.stage("broken", sluice.plugin { cmd = "./faulty", args = { "stderrexit" } })
`), 0o644)
	out, code := runBin(t, "check", "-c", cfg)
	if code != 1 {
		t.Fatalf("check of a plugin that exits at start: exit %d, want 1\n%s", code, out)
	}
	for _, want := range []string{`stage "broken"`, "exit status 4", "fatal: cannot open /etc/faulty.conf"} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
	if len(out) > 4<<10 {
		t.Errorf("check printed %d bytes: the quoted stderr is not bounded", len(out))
	}
}
