package memlimit

import (
	"os"
	"path/filepath"
	"testing"
)

// The cgroup filesystem cannot be changed here: the tests lay out its
// files in a directory, as the kernel shows them.
func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCgroupLimit(t *testing.T) {
	for _, tc := range []struct {
		name  string
		proc  string
		files map[string]string
		want  int64
	}{
		{"v2 own limit", "0::/system.slice/sluice.service\n",
			map[string]string{"system.slice/sluice.service/memory.max": "536870912\n", "system.slice/memory.max": "max\n"}, 536870912},
		{"v2 parent's lower limit", "0::/system.slice/sluice.service\n",
			map[string]string{"system.slice/sluice.service/memory.max": "max\n", "system.slice/memory.max": "1073741824\n"}, 1073741824},
		{"v2 container root", "0::/\n", map[string]string{"memory.max": "268435456\n"}, 268435456},
		{"v2 no limit", "0::/user.slice\n", map[string]string{"user.slice/memory.max": "max\n"}, 0},
		{"v1 memory controller", "12:cpu,cpuacct:/x\n4:memory:/docker/abc\n",
			map[string]string{"memory/docker/abc/memory.limit_in_bytes": "402653184\n", "memory/memory.limit_in_bytes": "9223372036854771712\n"}, 402653184},
		{"v1 no limit", "4:memory:/\n", map[string]string{"memory/memory.limit_in_bytes": "9223372036854771712\n"}, 0},
		{"garbage", "not a cgroup line\n0::/a\n", map[string]string{"a/memory.max": "lots\n"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			root := filepath.Join(dir, "cgroup")
			write(t, filepath.Join(dir, "proc"), tc.proc)
			for p, s := range tc.files {
				write(t, filepath.Join(root, p), s)
			}
			if got := cgroupLimit(filepath.Join(dir, "proc"), root); got != tc.want {
				t.Errorf("cgroupLimit = %d, want %d", got, tc.want)
			}
		})
	}
	if got := cgroupLimit(filepath.Join(t.TempDir(), "missing"), "/nonexistent"); got != 0 {
		t.Errorf("no /proc/self/cgroup: %d", got)
	}
}

// GOMEMLIMIT set by the operator wins: Set leaves the runtime's limit.
func TestSetKeepsGOMEMLIMIT(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "300MiB")
	if limit, cg := Set(); limit != 0 || cg != 0 {
		t.Fatalf("Set = %d, %d with GOMEMLIMIT set", limit, cg)
	}
}
