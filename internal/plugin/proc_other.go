//go:build !linux

package plugin

import (
	"os"
	"os/exec"
)

// setProcAttrs does nothing outside Linux: there the plugin outlives a
// relay killed with kill -9 (a clean stop still kills it), and processes
// it forks are not stopped with it.
func setProcAttrs(*exec.Cmd) {}

// killGroup kills the plugin process itself outside Linux (it has no
// process group of its own there); 0 (no process) is ignored.
func killGroup(pid int) {
	if pid <= 0 {
		return
	}
	if p, err := os.FindProcess(pid); err == nil {
		_ = p.Kill()
	}
}
