//go:build !unix

package delivery

import "net"

type peekResult int

const (
	peekUnknown peekResult = iota
	peekIdle
	peekClosed
	peekData
)

// peekSocket is not implemented on this platform: Usable then relies on
// the session's own state only.
func peekSocket(c net.Conn) peekResult { return peekUnknown }
