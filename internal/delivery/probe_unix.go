//go:build unix

package delivery

import (
	"errors"
	"syscall"
)

type peekResult int

const (
	peekUnknown peekResult = iota // the probe cannot tell
	peekIdle                      // open, nothing to read
	peekClosed                    // the peer closed or reset the connection
	peekData                      // bytes are waiting
)

// peekSocket looks at rc's socket without blocking and without consuming
// anything (recv with MSG_PEEK on the non-blocking descriptor Go keeps).
// rc nil: the connection has no descriptor (peekUnknown).
func peekSocket(rc syscall.RawConn) peekResult {
	if rc == nil {
		return peekUnknown
	}
	p := prober{res: peekUnknown}
	if err := rc.Read(p.peek); err != nil {
		return peekClosed
	}
	return p.res
}

// prober is peekSocket's callback and its result.
type prober struct {
	res peekResult
	buf [1]byte
}

func (p *prober) peek(fd uintptr) bool {
	n, _, err := syscall.Recvfrom(int(fd), p.buf[:], syscall.MSG_PEEK)
	for errors.Is(err, syscall.EINTR) {
		n, _, err = syscall.Recvfrom(int(fd), p.buf[:], syscall.MSG_PEEK)
	}
	switch {
	case n > 0:
		p.res = peekData
	case err == nil: // n == 0: orderly shutdown by the peer
		p.res = peekClosed
	case errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK):
		p.res = peekIdle
	default:
		p.res = peekClosed
	}
	return true // never wait for readiness
}
