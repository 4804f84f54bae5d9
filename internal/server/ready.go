package server

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// probeSpoolDir checks that the spool's directory takes a new file now: it
// creates and removes an empty file there. The spool's own flags (full,
// read-only, failed) change only when a write meets the condition, so a
// directory that became unwritable while no mail arrived (a filesystem
// remounted read-only, an exhausted inode table, a permission change for
// a non-root node) would otherwise read as ready until the next message
// is refused. It costs a create and an unlink per /readyz request.
func probeSpoolDir(dir string) error {
	f, err := os.CreateTemp(dir, ".readyz-*")
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		switch {
		case errors.Is(err, syscall.EROFS):
			return fmt.Errorf("the spool directory %s is on a read-only filesystem", dir)
		case errors.Is(err, syscall.ENOSPC):
			return fmt.Errorf("the spool directory %s is on a full filesystem (no space or no inodes)", dir)
		}
		return fmt.Errorf("the spool directory %s does not take new files: %v", dir, err)
	}
	name := f.Name()
	f.Close()
	if err := os.Remove(name); err != nil {
		return fmt.Errorf("the spool directory %s: removing the readiness probe: %v", dir, err)
	}
	return nil
}
