//go:build !unix

package delivery

import "syscall"

type peekResult int

const (
	peekUnknown peekResult = iota
	peekIdle
	peekClosed
	peekData
)

// peekSocket is not implemented on this platform: Usable then relies on
// the session's own state only.
func peekSocket(rc syscall.RawConn) peekResult { return peekUnknown }
