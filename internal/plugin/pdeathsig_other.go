//go:build !linux

package plugin

import "os/exec"

// setPdeathsig does nothing outside Linux: there the plugin outlives a
// relay killed with kill -9 (a clean stop still kills it).
func setPdeathsig(*exec.Cmd) {}
