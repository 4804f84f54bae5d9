package spool

import (
	"github.com/cockroachdb/pebble/v2/vfs"
	"golang.org/x/sys/unix"
)

// writeBack writes [off, off+n) of f to the disk and waits for it
// (sync_file_range(2) with WAIT_BEFORE|WRITE|WAIT_AFTER): the pages are
// clean afterwards, so a later fdatasync of the file by Pebble does not
// write them. It makes nothing durable by itself (no metadata, no disk
// cache flush). Files without a descriptor (in-memory test filesystems)
// are left alone.
func writeBack(f vfs.File, off, n int64) error {
	fd := f.Fd()
	if fd == vfs.InvalidFd {
		return nil
	}
	return unix.SyncFileRange(int(fd), off, n,
		unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER)
}
