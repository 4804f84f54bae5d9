package plugin

import (
	"os/exec"
	"syscall"
)

// setProcAttrs starts the plugin in a process group of its own (its id is
// the plugin's pid), so that killGroup also ends what it forks, and asks
// the kernel to SIGKILL the plugin when the relay dies, even by kill -9.
// Pdeathsig reaches only the plugin itself, not its children: the relay
// killed by kill -9 cannot signal the group (see docs/plugins.md). Linux
// ties Pdeathsig to the thread that forked; Go does not end its threads
// while the process runs, except for goroutines that exit while locked to
// their thread, which this package does not do.
func setProcAttrs(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}

// killGroup sends SIGKILL to the process group pgid; 0 (no process) is
// ignored. A group already gone is not an error.
func killGroup(pgid int) {
	if pgid > 0 {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
}
