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

// TestCheckRefusesWhatServeRefuses: for each configuration serve cannot
// run, `sluice check` refuses it with the same message as `sluice serve`,
// and neither creates the spool directory or the events file.
func TestCheckRefusesWhatServeRefuses(t *testing.T) {
	base := `local sluice = require("sluice")
sluice.spool { path = "{{DIR}}/spool" }
`
	listen := `sluice.events { file = "{{DIR}}/events/events.jsonl" }
sluice.listen_smtp { addr = "127.0.0.1:0" }
`
	for name, tc := range map[string]struct {
		body, want string
		files      map[string]string
	}{
		"kafka CA file missing": {`sluice.listen_smtp { addr = "127.0.0.1:0" }
sluice.events { file = "{{DIR}}/events/events.jsonl", kafka = { brokers = { "127.0.0.1:9092" }, tls = { ca = "{{DIR}}/nope-ca.pem" } } }`,
			"kafka.tls.ca", nil},
		"users file missing": {listen + `sluice.auth { users = "{{DIR}}/nope-users" }`, `users file`, nil},
		"users file malformed": {listen + `sluice.auth { users = "{{DIR}}/users" }`, `users: line 1`,
			map[string]string{"users": "alice:acme:plaintext:\n"}},
		"missing TLS files": {`sluice.listen_smtp { addr = "127.0.0.1:0", tls = { cert = "{{DIR}}/nope.pem", key = "{{DIR}}/nope.key" } }`,
			"nope.pem", nil},
		"HTTP TLS files": {listen + `sluice.listen_http { addr = "127.0.0.1:0", tls = { cert = "{{DIR}}/nope.pem", key = "{{DIR}}/nope.key" } }`,
			"http listener", nil},
		"stage script fails": {listen + `sluice.stage("policy", sluice.lua("policy.lua"))`, "policy.lua:2",
			map[string]string{"policy.lua": "local x = 1\nerror(\"broken at load\")\nreturn {}\n"}},
		"stage script returns no table": {listen + `sluice.stage("policy", sluice.lua("policy.lua"))`, "policy",
			map[string]string{"policy.lua": "return 42\n"}},
		"header edit at on_route": {listen + `sluice.stage("routing", {
  on_route = function(msg, rcpt)
    msg:add_header("X-Route", rcpt.domain)
  end,
})`, `on_route calls add_header; header edits are not allowed in on_route`, nil},
		"unknown built-in": {listen + `sluice.stage("auth", sluice.builtin.auth { users = "users.txt" })`, `unknown built-in stage "auth"`, nil},
		"no listener":      {``, "has no listener", nil},
		"bad bounce rule": {listen + `sluice.bounces { rules = { "{{DIR}}/bounce.toml" } }`, "class SpamBlock, rule 1",
			map[string]string{"bounce.toml": "[rules]\nSpamBlock = [ \"(?<=blocked) by\" ]\n"}},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			for f, src := range tc.files {
				if err := os.WriteFile(filepath.Join(dir, f), []byte(src), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			cfg := filepath.Join(dir, "pipeline.lua")
			src := strings.ReplaceAll(base+tc.body+"\n", "{{DIR}}", dir)
			if err := os.WriteFile(cfg, []byte(src), 0o644); err != nil {
				t.Fatal(err)
			}
			checkOut, code := runBin(t, "check", "-c", cfg)
			if code != 1 || !strings.Contains(checkOut, tc.want) {
				t.Fatalf("check: exit %d, output %q; want exit 1 and %q", code, checkOut, tc.want)
			}
			serveOut, code := runBin(t, "serve", "-c", cfg)
			if code != 1 || !strings.Contains(serveOut, strings.TrimSpace(checkOut)) {
				t.Fatalf("serve: exit %d, output %q; want exit 1 and check's message %q", code, serveOut, checkOut)
			}
			for _, p := range []string{"spool", "events"} {
				if _, err := os.Stat(filepath.Join(dir, p)); err == nil {
					t.Errorf("%s was created for a configuration that cannot run", p)
				}
			}
		})
	}
}
