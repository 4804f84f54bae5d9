package sdk

import (
	"os"
	"strings"
)

// SysmonAwake is the GODEBUG setting Sluice adds to every plugin's
// environment unless the stage's env sets schedtrace (docs/plugins.md, "CPU
// of a Go plugin between calls"): a scheduler trace every 2^31−1 ms, whose
// purpose is to keep the runtime's sysmon thread out of its deep sleep.
// Serve takes it out of the plugin's GODEBUG again (forgetSluiceSchedtrace).
const SysmonAwake = "schedtrace=2147483647"

// withoutSluiceSchedtrace returns the GODEBUG value v without its
// SysmonAwake fields; changed says whether it had one.
func withoutSluiceSchedtrace(v string) (_ string, changed bool) {
	fields := strings.Split(v, ",")
	kept := fields[:0]
	for _, f := range fields {
		if f == SysmonAwake {
			changed = true
			continue
		}
		kept = append(kept, f)
	}
	return strings.Join(kept, ","), changed
}

// forgetSluiceSchedtrace takes SysmonAwake out of this process's
// GODEBUG, so that the processes the plugin starts do not inherit it (a Go
// program would print the runtime's scheduler trace on its stderr: a line
// at its start on a machine up for more than 24.8 days, its scheduler
// state when it crashes). This process keeps its effect: the runtime reads
// schedtrace once, at start, and not again when GODEBUG changes.
func forgetSluiceSchedtrace() {
	v, ok := os.LookupEnv("GODEBUG")
	if !ok {
		return
	}
	if v, changed := withoutSluiceSchedtrace(v); changed {
		if v == "" {
			os.Unsetenv("GODEBUG")
		} else {
			os.Setenv("GODEBUG", v)
		}
	}
}
