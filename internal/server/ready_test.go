package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/sluice-mta/sluice/internal/testutil"
)

// TestReadyzSpoolUnavailable: /readyz turns 503, naming the spool and why,
// while the spool's directory takes no new file (its filesystem is out of
// inodes) and while the filesystem is below the min_free reserve; it is
// ready again once each is undone. /healthz stays 200 throughout (alive).
// The spool is on a real tmpfs: as root a chmod would not stop a write,
// and a read-only remount is refused while the spool holds files open for
// writing (TestProbeSpoolDirReadOnly covers that case without a node).
func TestReadyzSpoolUnavailable(t *testing.T) {
	fs := testutil.MountTmpfs(t, "size=40m,nr_inodes=400")
	admin := testutil.FreeAddr(t)
	cfg := load(t, fmt.Sprintf(`local sluice = require("sluice")
sluice.spool { path = "%s/spool", min_free = "8MB", memtable_mb = 4 }
sluice.events { file = "%s/events.jsonl" }
sluice.listen_smtp { addr = "127.0.0.1:0" }
sluice.listen_admin { addr = "%s", allow = { "127.0.0.1" } }
`, fs, t.TempDir(), admin))
	if err := EnsureDirs(cfg); err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Stop(context.Background())
	get := func(path string) (int, string) { return testutil.HTTPGet(t, "http://"+admin+path) }
	waitReady := func(what string, code int, says string) {
		t.Helper()
		var last string
		testutil.WaitFor(t, what, func() bool {
			c, body := get("/readyz")
			last = fmt.Sprintf("%d %q", c, body)
			return c == code && strings.Contains(body, says)
		})
		if c, body := get("/healthz"); c != 200 {
			t.Errorf("%s: /healthz %d %q", what, c, body)
		}
		t.Logf("%s: /readyz %s", what, last)
	}
	waitReady("a fresh node", 200, "ready")

	// Use up the inodes: the spool's directory takes no new file.
	var used []string
	for i := 0; ; i++ {
		p := filepath.Join(fs, fmt.Sprintf("inode-%d", i))
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
		used = append(used, p)
	}
	waitReady("spool directory out of inodes", 503, "spool: the spool directory "+cfg.Spool.Path+" is on a full filesystem")
	for _, p := range used {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	waitReady("inodes free again", 200, "ready")

	// Fill the filesystem to below the 8 MB reserve.
	var st syscall.Statfs_t
	if err := syscall.Statfs(fs, &st); err != nil {
		t.Fatal(err)
	}
	avail := int64(st.Bavail) * int64(st.Bsize)
	filler := filepath.Join(fs, "filler")
	if err := os.WriteFile(filler, make([]byte, avail-4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	waitReady("spool below its reserve", 503, "spool: the spool refuses new mail: spool: free space below the reserve")
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitReady("spool above its reserve again", 200, "ready")
}

// TestProbeSpoolDirReadOnly: the readiness probe names a read-only
// filesystem (a tmpfs remounted read-only; no node holds files open on
// it, which would make the remount fail).
func TestProbeSpoolDirReadOnly(t *testing.T) {
	fs := testutil.MountTmpfs(t, "size=1m")
	if err := probeSpoolDir(fs); err != nil {
		t.Fatalf("writable tmpfs: %v", err)
	}
	testutil.Remount(t, fs, "ro")
	err := probeSpoolDir(fs)
	if err == nil || !strings.Contains(err.Error(), "read-only filesystem") {
		t.Fatalf("read-only tmpfs: %v", err)
	}
	testutil.Remount(t, fs, "rw")
	if err := probeSpoolDir(fs); err != nil {
		t.Fatalf("writable again: %v", err)
	}
	if err := probeSpoolDir(filepath.Join(fs, "missing")); err == nil {
		t.Fatal("a missing directory passed the probe")
	}
}
