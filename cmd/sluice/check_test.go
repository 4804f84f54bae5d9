package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func runBin(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(binPath, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), code
}

func TestCheckCommand(t *testing.T) {
	out, code := runBin(t, "check", "-c", "../../pipeline.example.lua")
	if code != 0 || !strings.Contains(out, "ok") {
		t.Fatalf("check of the example config: exit %d\n%s", code, out)
	}
	examples, _ := filepath.Glob("../../examples/*/pipeline.lua")
	examples = append(examples, "../../examples/bench/relay.lua")
	if len(examples) < 3 {
		t.Fatalf("example configurations not found: %v", examples)
	}
	for _, ex := range examples {
		if out, code := runBin(t, "check", "-c", ex); code != 0 {
			t.Errorf("check %s: exit %d\n%s", ex, code, out)
		}
	}

	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.lua")
	os.WriteFile(bad, []byte("local sluice = require(\"sluice\")\n\nsluice.listen_smtp { adress = \"127.0.0.1:25\" }\n"), 0o644)
	out, code = runBin(t, "check", "-c", bad)
	if code != 1 || !strings.Contains(out, "bad.lua:3") || !strings.Contains(out, "adress") {
		t.Fatalf("unknown key: exit %d, output %q; want exit 1 naming bad.lua:3 and the key", code, out)
	}
	os.WriteFile(bad, []byte("local sluice = require(\"sluice\")\nsluice.stage(\"x\", { on_rcpt = function(txn, rcpt) return 1 +  end })\n"), 0o644)
	out, code = runBin(t, "check", "-c", bad)
	if code != 1 || !strings.Contains(out, "bad.lua:2") {
		t.Fatalf("syntax error: exit %d, output %q", code, out)
	}
	if _, code := runBin(t, "frobnicate"); code != 2 {
		t.Fatalf("unknown command exit %d, want 2", code)
	}
	if out, code := runBin(t, "version"); code != 0 || !strings.HasPrefix(out, "sluice ") {
		t.Fatalf("version: %d %q", code, out)
	}
}
