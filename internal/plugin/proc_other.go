//go:build !linux

package plugin

import "os/exec"

// setProcAttrs does nothing outside Linux: there the plugin outlives a
// relay killed with kill -9 (a clean stop still kills it), and processes
// it forks are not stopped with it.
func setProcAttrs(*exec.Cmd) {}

// killGroup does nothing outside Linux; go-plugin kills the plugin itself.
func killGroup(int) {}
