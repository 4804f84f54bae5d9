package plugin

import (
	"bytes"
	"strings"

	"github.com/sluice-mta/sluice/plugins/sdk"
)

// sysmonAwake is the GODEBUG setting Sluice gives every plugin process
// unless the plugin's environment already names schedtrace (in GODEBUG):
// a Go runtime scheduler trace every 2^31−1 ms (24.8 days). Its purpose is
// its side effect: with schedtrace set, the runtime's monitor thread
// (sysmon) never enters its deep sleep when the process is idle, so the
// plugin's first system call after an idle moment (reading the next
// request) does not wake it with a futex call and a thread switch, and
// sysmon does not then poll every 20 µs for a millisecond. A plugin is
// idle between most calls; end to end this is about a fifth of a
// header-only Go plugin's CPU per message (BENCHMARKS.md, "Issue 16:
// sysmon kept awake by default, inline calls"). Non-Go plugins ignore GODEBUG. The trace lines it
// makes the runtime print on stderr are dropped from the relay's log
// (schedFilter). A schedtrace in the stage's env GODEBUG wins (0: the
// runtime's default; another period: a real trace, logged; this one: as
// if Sluice had added it).
const sysmonAwake = sdk.SysmonAwake

// withSysmonAwake returns env (a process environment, "K=V" entries, the
// last of a key winning as in os/exec) with sysmonAwake added to GODEBUG,
// unless GODEBUG already sets schedtrace. quiet says whether the process's
// schedtrace is then sysmonAwake's (added, or already set to it, the last
// setting winning as in the runtime): its trace lines are not logged. The
// input slice is not changed.
func withSysmonAwake(env []string) (_ []string, quiet bool) {
	cur, at := "", -1
	for i, kv := range env {
		if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
			cur, at = v, i
		}
	}
	set := false
	for _, f := range strings.Split(cur, ",") {
		if f = strings.TrimSpace(f); strings.HasPrefix(f, "schedtrace=") {
			set, quiet = true, f == sysmonAwake
		}
	}
	if set {
		return env, quiet
	}
	v := sysmonAwake
	if cur != "" {
		v = cur + "," + sysmonAwake
	}
	if at >= 0 {
		env = append(env[:at:at], env[at+1:]...)
	}
	return append(env, "GODEBUG="+v), true
}

// schedFilter recognizes the Go runtime's scheduler trace on a plugin's
// stderr (what sysmonAwake's schedtrace prints; used only when Sluice set
// it): a line "SCHED 123ms:
// gomaxprocs=...", and, when the process crashes, the detailed form that
// follows it, one line per P, M and G ("  P0: status=...", "  M1: p=...",
// "  G1: status=..."). The detailed lines are dropped only right after a
// SCHED line, so that nothing else a plugin prints is lost; the panic's
// own trace ("panic: ...", "goroutine 1 [running]:") is kept. Not safe
// for concurrent use (a lineLogger holds one under its lock).
type schedFilter struct {
	on bool // filter; false: drop nothing
	in bool // the previous line was part of a scheduler trace
}

// drop reports whether line (without its end of line) is scheduler trace.
func (f *schedFilter) drop(line []byte) bool {
	if !f.on {
		return false
	}
	if isSchedLine(line) {
		f.in = true
		return true
	}
	if f.in && isSchedDetail(line) {
		return true
	}
	f.in = false
	return false
}

// isSchedLine: "SCHED <n>ms: gomaxprocs=".
func isSchedLine(line []byte) bool {
	rest, ok := bytes.CutPrefix(line, []byte("SCHED "))
	if !ok {
		return false
	}
	n := 0
	for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
		n++
	}
	return n > 0 && bytes.HasPrefix(rest[n:], []byte("ms: gomaxprocs="))
}

// isSchedDetail: "  P<n>: ", "  M<n>: " or "  G<n>: ".
func isSchedDetail(line []byte) bool {
	if len(line) < 5 || line[0] != ' ' || line[1] != ' ' || (line[2] != 'P' && line[2] != 'M' && line[2] != 'G') {
		return false
	}
	n := 3
	for n < len(line) && line[n] >= '0' && line[n] <= '9' {
		n++
	}
	return n > 3 && n < len(line) && line[n] == ':'
}

// dropSchedTrace returns text (lines) without the scheduler trace lines
// schedFilter drops. inTrace: text may begin inside a trace (the start of
// the output was cut off), so its leading "  P0: ", "  M1: ", "  G1: "
// lines are dropped too.
func dropSchedTrace(text string, inTrace bool) string {
	if !inTrace && !strings.Contains(text, "SCHED ") {
		return text
	}
	f := schedFilter{on: true, in: inTrace}
	lines := strings.Split(text, "\n")
	kept := lines[:0]
	for _, l := range lines {
		if !f.drop([]byte(strings.TrimRight(l, "\r"))) {
			kept = append(kept, l)
		}
	}
	return strings.Join(kept, "\n")
}
