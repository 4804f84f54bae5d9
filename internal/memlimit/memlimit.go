// Package memlimit gives the Go runtime a soft memory limit
// (runtime/debug.SetMemoryLimit) derived from the cgroup memory limit the
// process runs under, when the operator has not set GOMEMLIMIT.
//
// Why: the garbage collector lets the heap grow to about twice the live
// heap (GOGC=100) before it collects. A node with a million recipients
// queued holds about 150 MB of live queue index (issue 21), so its heap
// peaks near 300 MB plus what acceptance allocates between collections;
// under a systemd MemoryMax= or a container memory limit that headroom
// can be what gets the process killed. With a soft limit the collector
// runs more often as the heap nears it, instead. The limit is soft: the
// live heap is not capped, and a heap that truly needs more than the
// limit makes the collector work harder (Go caps it at about half the
// CPU), not the process fail.
package memlimit

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
)

// Fraction is the share of the cgroup memory limit given to the Go
// runtime as its soft limit: the rest is for what the Go runtime does not
// count (the spool's memtables and block cache are allocated outside the
// Go heap, about 70–140 MB with the default memtable_mb = 64) and for
// slack.
const Fraction = 0.75

// Set sets the Go runtime's soft memory limit to Fraction of the cgroup
// (v2 or v1) memory limit of this process, unless the GOMEMLIMIT
// environment variable is set (then the runtime already applied it, and
// "off" turns the limit off) or no cgroup limit applies. It returns the
// limit set in bytes, 0 when it set none, and the cgroup limit it read
// (0: none found).
func Set() (limit, cgroup int64) {
	if _, ok := os.LookupEnv("GOMEMLIMIT"); ok {
		return 0, 0
	}
	cg := cgroupLimit("/proc/self/cgroup", "/sys/fs/cgroup")
	if cg <= 0 {
		return 0, 0
	}
	limit = int64(float64(cg) * Fraction)
	debug.SetMemoryLimit(limit)
	return limit, cg
}

// cgroupLimit is the memory limit of the process's cgroup in bytes, the
// lowest along its path up to the root (a limit on a parent applies to
// its children); 0 when none is set or it cannot be read. procCgroup is
// /proc/self/cgroup, root the cgroup filesystem's mount point.
func cgroupLimit(procCgroup, root string) int64 {
	data, err := os.ReadFile(procCgroup)
	if err != nil {
		return 0
	}
	var best int64
	lower := func(v int64) {
		if v > 0 && (best == 0 || v < best) {
			best = v
		}
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		// hierarchy-ID:controller-list:cgroup-path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "": // cgroup v2
			walkUp(filepath.Join(root, parts[2]), root, "memory.max", lower)
		case slices.Contains(strings.Split(parts[1], ","), "memory"): // cgroup v1
			base := filepath.Join(root, "memory")
			walkUp(filepath.Join(base, parts[2]), base, "memory.limit_in_bytes", lower)
		}
	}
	return best
}

// noLimitV1 is about what cgroup v1 reports for no limit (the largest
// page-aligned int64); anything at or above it is no limit.
const noLimitV1 = 1 << 62

// walkUp calls fn with the value of file in dir and each of its parents
// up to root, for those that hold a limit ("max", or v1's huge value, is
// none).
func walkUp(dir, root, file string, fn func(int64)) {
	root = filepath.Clean(root)
	for d := filepath.Clean(dir); strings.HasPrefix(d, root); d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, file)); err == nil {
			s := strings.TrimSpace(string(b))
			if v, err := strconv.ParseInt(s, 10, 64); err == nil && v < noLimitV1 {
				fn(v)
			}
		}
		if d == root {
			return
		}
	}
}
