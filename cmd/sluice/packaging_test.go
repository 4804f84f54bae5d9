package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The packaging files name sluice commands; these tests run each of them
// with the real binary so that a renamed flag breaks the build, not an
// operator's service.

// unitExecLines returns the Exec* command lines of the systemd unit.
func unitExecLines(t *testing.T) map[string][]string {
	t.Helper()
	b, err := os.ReadFile("../../examples/systemd/sluice.service")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if ok && strings.HasPrefix(k, "Exec") {
			out[k] = strings.Fields(v)
		}
	}
	return out
}

// TestSystemdUnitCommands: every Exec line of the unit runs
// /usr/bin/sluice with flags the binary accepts (each run with -h exits
// 0), and systemd-analyze verify accepts the unit when it is installed.
func TestSystemdUnitCommands(t *testing.T) {
	lines := unitExecLines(t)
	for _, k := range []string{"ExecStartPre", "ExecStart", "ExecReload"} {
		f := lines[k]
		if len(f) < 2 || f[0] != "/usr/bin/sluice" {
			t.Fatalf("%s = %v: want /usr/bin/sluice COMMAND ...", k, f)
		}
		if out, code := runBin(t, append(f[1:], "-h")...); code != 0 {
			t.Errorf("%s: sluice %s -h: exit %d\n%s", k, strings.Join(f[1:], " "), code, out)
		}
	}
	if !strings.Contains(strings.Join(lines["ExecReload"], " "), "reload") {
		t.Errorf("ExecReload does not use sluice reload: %v", lines["ExecReload"])
	}
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: unit syntax not verified")
		return
	}
	b, _ := os.ReadFile("../../examples/systemd/sluice.service")
	unit := filepath.Join(t.TempDir(), "sluice.service")
	os.WriteFile(unit, []byte(strings.ReplaceAll(string(b), "/usr/bin/sluice", binPath)), 0o644)
	if out, err := exec.Command(sa, "verify", unit).CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// dockerJSONArgs returns the JSON-array form arguments of a Dockerfile
// instruction (CMD, ENTRYPOINT, HEALTHCHECK ... CMD).
func dockerJSONArgs(t *testing.T, src, instr string) []string {
	t.Helper()
	src = strings.ReplaceAll(src, "\\\n", " ")
	re := regexp.MustCompile(`(?m)^` + instr + `\b.*?(\[.*\])\s*$`)
	m := re.FindStringSubmatch(src)
	if m == nil {
		t.Fatalf("Dockerfile has no %s [...]", instr)
	}
	var args []string
	if err := json.Unmarshal([]byte(m[1]), &args); err != nil {
		t.Fatalf("%s: %v", instr, err)
	}
	return args
}

// TestDockerfileCommands: the image's CMD serves the configuration the
// image ships (sluice check accepts it), and its HEALTHCHECK is a sluice
// health command that reports a running relay's admin listener healthy.
func TestDockerfileCommands(t *testing.T) {
	b, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	src := string(b)
	entry := dockerJSONArgs(t, src, "ENTRYPOINT")
	cmd := dockerJSONArgs(t, src, "CMD")
	health := dockerJSONArgs(t, src, "HEALTHCHECK")
	if len(entry) != 1 || entry[0] != "/usr/bin/sluice" || cmd[0] != "serve" || health[0] != "/usr/bin/sluice" || health[1] != "health" {
		t.Fatalf("ENTRYPOINT %v CMD %v HEALTHCHECK %v", entry, cmd, health)
	}
	if out, code := runBin(t, append(cmd, "-h")...); code != 0 {
		t.Errorf("CMD flags: exit %d\n%s", code, out)
	}
	if !strings.Contains(src, "cp examples/docker/pipeline.lua /out/etc/sluice/pipeline.lua") || !strings.Contains(strings.Join(cmd, " "), "-c /etc/sluice/pipeline.lua") {
		t.Errorf("the image does not serve the configuration it ships")
	}
	if out, code := runBin(t, "check", "-c", "../../examples/docker/pipeline.lua"); code != 0 {
		t.Errorf("check of the image's configuration: exit %d\n%s", code, out)
	}
	// The health check against a relay whose admin listener is where
	// the image's configuration puts it (port replaced by a free one).
	dir := t.TempDir()
	_, admin := startAdminRelay(t, dir)
	args := append([]string{}, health[1:]...)
	for i, a := range args {
		args[i] = strings.Replace(a, "127.0.0.1:9101", admin, 1)
	}
	var out string
	code := -1
	waitFor(t, "the image's health check to pass", func() bool {
		out, code = runBin(t, args...)
		return code == 0
	})
	if !strings.Contains(out, "200 OK") {
		t.Errorf("health check: %s", out)
	}
}
