//go:build unix

package delivery

import (
	"errors"
	"net"
	"syscall"
)

type peekResult int

const (
	peekUnknown peekResult = iota // the probe cannot tell
	peekIdle                      // open, nothing to read
	peekClosed                    // the peer closed or reset the connection
	peekData                      // bytes are waiting
)

// peekSocket looks at c's socket without blocking and without consuming
// anything (recv with MSG_PEEK on the non-blocking descriptor Go keeps).
func peekSocket(c net.Conn) peekResult {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return peekUnknown
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return peekUnknown
	}
	res := peekUnknown
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK)
		for errors.Is(err, syscall.EINTR) {
			n, _, err = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK)
		}
		switch {
		case n > 0:
			res = peekData
		case err == nil: // n == 0: orderly shutdown by the peer
			res = peekClosed
		case errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK):
			res = peekIdle
		default:
			res = peekClosed
		}
		return true // never wait for readiness
	})
	if err != nil {
		return peekClosed
	}
	return res
}
