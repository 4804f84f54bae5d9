package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestHelpExitsZero: -h and --help (and -help for the commands) exit 0
// for every command and subcommand, serve included, and print a usage
// text.
// TestTopUsageNamesSubcommands: `sluice help` lists every subcommand of
// the commands whose subcommands it spells out, so an operator finds
// `dns apply` and `domain rotate` without reading the docs first.
func TestTopUsageNamesSubcommands(t *testing.T) {
	out, code := runBin(t, "help")
	if code != 0 {
		t.Fatalf("sluice help: exit %d\n%s", code, out)
	}
	for _, want := range []string{
		"sluice domain  add|show|verify|list|remove|rotate ",
		"sluice dns     records|check|apply ",
		"sluice tlsrpt report|send ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("sluice help does not list %q:\n%s", want, out)
		}
	}
}

func TestHelpExitsZero(t *testing.T) {
	commands := [][]string{
		{}, {"serve"}, {"check"}, {"reload"}, {"test"}, {"test-scripts"}, {"version"},
		{"apikey"}, {"apikey", "create"}, {"apikey", "list"}, {"apikey", "revoke"},
		{"send"}, {"suppression"}, {"suppression", "list"}, {"suppression", "add"}, {"suppression", "remove"},
		{"passwd"}, {"health"}, {"token"}, {"token", "keygen"}, {"token", "issue"}, {"token", "revoke"},
		{"dkim"}, {"dkim", "keygen"},
		{"dns"}, {"dns", "records"}, {"dns", "check"}, {"dns", "apply"},
		{"domain"}, {"domain", "add"}, {"domain", "show"}, {"domain", "verify"}, {"domain", "list"}, {"domain", "remove"}, {"domain", "rotate"},
		{"tlsrpt"}, {"tlsrpt", "report"}, {"tlsrpt", "send"},
	}
	for _, cmd := range commands {
		forms := []string{"-h", "--help"}
		if len(cmd) <= 1 {
			// The command dispatchers compare the word themselves; the
			// flag package takes all three forms alike.
			forms = append(forms, "-help")
		}
		for _, h := range forms {
			args := append(append([]string{}, cmd...), h)
			out, code := runBin(t, args...)
			if code != 0 {
				t.Errorf("sluice %s: exit %d, want 0\n%s", strings.Join(args, " "), code, out)
			}
			if !strings.Contains(strings.ToLower(out), "usage") && !strings.Contains(out, "  -") {
				t.Errorf("sluice %s printed no usage:\n%s", strings.Join(args, " "), out)
			}
		}
	}
	if _, code := runBin(t, "serve", "-no-such-flag"); code != 2 {
		t.Errorf("serve with an unknown flag: exit %d, want 2", code)
	}
	if _, code := runBin(t, "no-such-command"); code != 2 {
		t.Errorf("unknown command: exit %d, want 2", code)
	}
}

// TestVersionFromLdflags: a binary built with the Makefile's -ldflags
// reports that version and commit; `version --json` carries them and the
// Go version.
func TestVersionFromLdflags(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "sluice")
	ld := "-X main.version=v9.8.7-test -X main.commit=0123456789abcdef0123456789abcdef01234567"
	if out, err := exec.Command("go", "build", "-ldflags", ld, "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(out), "sluice v9.8.7-test (commit 0123456789ab") {
		t.Errorf("version: %q", out)
	}
	out, err = exec.Command(bin, "version", "--json").Output()
	if err != nil {
		t.Fatal(err)
	}
	var b buildInfo
	if err := json.Unmarshal(out, &b); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if b.Version != "v9.8.7-test" || b.Commit != "0123456789abcdef0123456789abcdef01234567" || !strings.HasPrefix(b.Go, "go1.") ||
		b.Module != "github.com/sluice-mta/sluice" {
		t.Errorf("version --json: %+v", b)
	}
}

// TestVersionWithoutLdflags: the test binary (built without -ldflags)
// says "dev" and, built inside the git checkout, the VCS revision.
func TestVersionWithoutLdflags(t *testing.T) {
	out, code := runBin(t, "version", "--json")
	var b buildInfo
	if code != 0 || json.Unmarshal([]byte(out), &b) != nil {
		t.Fatalf("exit %d\n%s", code, out)
	}
	if b.Version != "dev" || !strings.HasPrefix(b.Go, "go1.") {
		t.Errorf("version --json: %+v", b)
	}
	rev, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err == nil && b.Commit != "" && b.Commit != strings.TrimSpace(string(rev)) {
		t.Errorf("commit %q, want HEAD %q", b.Commit, rev)
	}
}

// TestTestScriptsCommand: the Lua tests of the shipped scripts and of the
// examples' scripts pass (exit 0); a
// failing assertion is reported with its file:line and exit 1.
func TestTestScriptsCommand(t *testing.T) {
	out, code := runBin(t, "test-scripts", "../../scripts", "../../examples")
	if code != 0 || !strings.Contains(out, "PASS:") || !strings.Contains(out, "examples/inbound-mx/senders_test.lua") {
		t.Errorf("test-scripts scripts: exit %d\n%s", code, out)
	}
	out, code = runBin(t, "test-scripts", "../../internal/luatest/testdata/failing")
	if code != 1 {
		t.Errorf("failing tests: exit %d, want 1\n%s", code, out)
	}
	if !strings.Contains(out, "internal/luatest/testdata/failing/policy_test.lua:11: the code of a blocked domain: got 550, want 451") {
		t.Errorf("failure without file:line:\n%s", out)
	}
	if _, code := runBin(t, "test-scripts", t.TempDir()); code != 1 {
		t.Errorf("a directory without tests: exit %d, want 1", code)
	}
	if _, code := runBin(t, "test-scripts"); code != 2 {
		t.Errorf("no directory: exit %d, want 2", code)
	}
}

// TestHealthCommand: `sluice health` asks a running relay's admin
// listener: 200 from /healthz and /readyz (exit 0); a relay that is not
// running (exit 1); a configuration without listen_admin (exit 1).
func TestHealthCommand(t *testing.T) {
	dir := t.TempDir()
	r, admin := startAdminRelay(t, dir)
	var out string
	var code int
	waitFor(t, "the admin listener", func() bool {
		out, code = runBin(t, "health", "-c", r.cfg)
		return code == 0
	})
	if !strings.Contains(out, "/healthz: 200 OK") {
		t.Errorf("health: %s", out)
	}
	if out, code := runBin(t, "health", "-c", r.cfg, "--ready"); code != 0 || !strings.Contains(out, "/readyz: 200 OK") {
		t.Errorf("health --ready: exit %d\n%s", code, out)
	}
	if out, code := runBin(t, "health", "--url", "http://"+admin+"/healthz"); code != 0 {
		t.Errorf("health --url: exit %d\n%s", code, out)
	}
	if out, code := runBin(t, "health", "--url", "http://"+admin+"/no-such-page"); code != 1 {
		t.Errorf("health of a 404: exit %d, want 1\n%s", code, out)
	}
	r.stop()
	if out, code := runBin(t, "health", "-c", r.cfg, "--timeout", "2s"); code != 1 {
		t.Errorf("health of a stopped relay: exit %d, want 1\n%s", code, out)
	}
	noAdmin := filepath.Join(dir, "noadmin.lua")
	os.WriteFile(noAdmin, []byte(`local sluice = require("sluice")
sluice.listen_smtp { addr = "127.0.0.1:0" }
`), 0o644)
	if out, code := runBin(t, "health", "-c", noAdmin); code != 1 || !strings.Contains(out, "listen_admin") {
		t.Errorf("health without listen_admin: exit %d\n%s", code, out)
	}
}

// startAdminRelay starts a relay in dir with an admin listener on a free
// port; it returns the relay and the admin address.
func startAdminRelay(t *testing.T, dir string) (*relayProc, string) {
	t.Helper()
	admin := freePort(t)
	r := newRelay(t, dir, `local sluice = require("sluice")
sluice.spool { path = "{{SPOOL}}" }
sluice.events { file = "{{EVENTS}}" }
sluice.listen_smtp { addr = "{{SMTP}}" }
sluice.listen_admin { addr = "`+admin+`" }
`)
	r.start()
	return r, admin
}
