package plugin

import (
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
)

// TestSocketDirRepeatedKills: three plugin processes killed with SIGKILL
// over and over (ten rounds): the temp directory never holds more than
// one socket directory per live process, and nothing at all after Close.
func TestSocketDirRepeatedKills(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	s, _ := start(t, "ok", Options{Instances: 3, HealthInterval: time.Hour})
	entries := func() []string {
		m, _ := filepath.Glob(filepath.Join(tmp, "*"))
		return m
	}
	waitFor(t, "three socket directories", func() bool { return len(entries()) == 3 })
	for round := range 10 {
		pids := s.PIDs()
		if len(pids) != 3 || slices.Contains(pids, 0) {
			t.Fatalf("round %d: plugin processes %v, want 3 running", round, pids)
		}
		for _, pid := range pids {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, "three new processes and only their directories", func() bool {
			now := s.PIDs()
			for _, p := range now {
				if p == 0 || slices.Contains(pids, p) {
					return false
				}
			}
			return len(entries()) == 3
		})
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if left := entries(); len(left) != 0 {
		t.Fatalf("left in the temp directory after Close: %v", left)
	}
}

// TestSocketDirOperatorEnv: a PLUGIN_UNIX_SOCKET_DIR the operator set (in
// the stage's env, or in Sluice's own environment) is where the plugin's
// socket goes; Sluice makes no directory of its own and does not remove
// the operator's.
func TestSocketDirOperatorEnv(t *testing.T) {
	for _, where := range []string{"stage", "process"} {
		t.Run(where, func(t *testing.T) { socketDirOperatorEnv(t, where) })
	}
}

func socketDirOperatorEnv(t *testing.T, where string) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	mine := t.TempDir()
	var o Options
	if where == "stage" {
		o.Env = []string{goplugin.EnvUnixSocketDir + "=" + mine}
	} else {
		t.Setenv(goplugin.EnvUnixSocketDir, mine)
	}
	o.HealthInterval = time.Hour
	s, _ := start(t, "ok", o)
	if d, _ := filepath.Glob(filepath.Join(tmp, "sluice-plugin-*")); len(d) != 0 {
		t.Fatalf("a socket directory was made although the operator chose one: %v", d)
	}
	if socks, _ := filepath.Glob(filepath.Join(mine, "*")); len(socks) != 1 {
		t.Fatalf("the operator's directory holds %v, want the plugin's socket", socks)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(mine); err != nil {
		t.Fatalf("the operator's directory was removed: %v", err)
	}
}
