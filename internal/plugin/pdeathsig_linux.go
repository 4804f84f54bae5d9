package plugin

import (
	"os/exec"
	"syscall"
)

// setPdeathsig asks the kernel to SIGKILL the plugin when the relay dies,
// even by kill -9. (Linux ties it to the thread that forked; Go does not end
// its threads while the process runs, except for goroutines that exit while
// locked to their thread, which this package does not do.)
func setPdeathsig(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}
