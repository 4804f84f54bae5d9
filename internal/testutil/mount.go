package testutil

import (
	"os/exec"
	"testing"
)

// MountTmpfs mounts a tmpfs with opts (e.g. "size=30m" or
// "size=30m,nr_inodes=100") at a new directory and
// unmounts it when the test ends, or skips the test where mounting is
// not allowed (it needs root; CI runs as root).
func MountTmpfs(t testing.TB, opts string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (needs root; CI runs as root): %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}

// Remount remounts the filesystem mounted at dir with opts ("ro", "rw"),
// failing the test if it cannot.
func Remount(t testing.TB, dir, opts string) {
	t.Helper()
	if out, err := exec.Command("mount", "-o", "remount,"+opts, dir).CombinedOutput(); err != nil {
		t.Fatalf("remount %s %s: %v %s", opts, dir, err, out)
	}
}
