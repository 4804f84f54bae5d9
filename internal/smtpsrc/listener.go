package smtpsrc

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-mta/sluice/internal/mailtext"
	"github.com/sluice-mta/sluice/internal/relay"
	"github.com/sluice-mta/sluice/pipeline"
)

// past is a deadline that has already expired: setting it as a read
// deadline makes a blocked or future read fail at once with a timeout.
var past = time.Unix(1, 0)

const (
	// rejectTimeout bounds the work spent on a connection refused for
	// being over MaxConnections (TLS handshake and the 421 line).
	rejectTimeout = 10 * time.Second
	// maxRejecters bounds the goroutines writing those refusals; beyond
	// it an excess connection is closed without a reply.
	maxRejecters = 16
)

// listener is the net.Listener go-smtp serves. Its own accept loop takes
// raw connections from the real listener, enforces MaxConnections, and for
// each admitted connection runs (in a goroutine bounded by the same
// limit) the implicit TLS handshake and on_connect; only connections that
// pass are handed to go-smtp through Accept. This keeps slow handshakes
// and on_connect stages off go-smtp's accept loop and lets on_connect
// answer with its own reply code before any greeting.
type listener struct {
	s     *Server
	raw   net.Listener
	ready chan net.Conn // admitted connections, handed to Accept
	errc  chan error    // a fatal error of the raw listener
	done  chan struct{} // closed by Close
	once  sync.Once
	cerr  error
}

func newListener(s *Server, raw net.Listener) *listener {
	return &listener{s: s, raw: raw, ready: make(chan net.Conn), errc: make(chan error, 1), done: make(chan struct{})}
}

// Accept returns the next admitted connection: a *trackedConn, or for an
// implicit TLS listener a *tls.Conn (handshake done) over one.
func (ln *listener) Accept() (net.Conn, error) {
	select {
	case c := <-ln.ready:
		return c, nil
	case err := <-ln.errc:
		return nil, err
	case <-ln.done:
		return nil, net.ErrClosed
	}
}

func (ln *listener) Close() error {
	ln.once.Do(func() {
		close(ln.done)
		ln.cerr = ln.raw.Close()
	})
	return ln.cerr
}

func (ln *listener) Addr() net.Addr { return ln.raw.Addr() }

func (ln *listener) closed() bool {
	select {
	case <-ln.done:
		return true
	default:
		return false
	}
}

// loop is the accept loop; it runs until the raw listener fails or is
// closed. It never blocks on a client: refusals and admissions run in
// bounded goroutines.
func (ln *listener) loop() {
	defer ln.s.wg.Done()
	var delay time.Duration
	for {
		c, err := ln.raw.Accept()
		if err != nil {
			if ln.closed() {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				// Out of file descriptors and the like: back off as
				// net/http does.
				if delay == 0 {
					delay = 5 * time.Millisecond
				} else if delay *= 2; delay > time.Second {
					delay = time.Second
				}
				ln.s.log.Warn("smtp accept failed; retrying", "err", err, "delay", delay)
				select {
				case <-time.After(delay):
				case <-ln.done:
					return
				}
				continue
			}
			ln.errc <- err
			return
		}
		delay = 0
		ip := remoteAddrPort(c).Addr()
		counted := !ln.s.inRelayNetworks(ip)
		if counted {
			if reason := ln.s.anvil.admit(ip, time.Now()); reason != "" {
				ln.s.refuse(c, reason)
				continue
			}
		}
		select {
		case ln.s.slots <- struct{}{}:
		default:
			if counted {
				ln.s.anvil.release(ip)
			}
			ln.s.refuse(c, reasonBusy)
			continue
		}
		tc := ln.s.track(c)
		ln.s.wg.Add(1)
		go ln.admit(tc)
	}
}

func isTemporary(err error) bool {
	t, ok := err.(interface{ Temporary() bool })
	return ok && t.Temporary()
}

// admit runs the implicit TLS handshake and on_connect for one connection
// that holds a slot, then hands it to go-smtp, or refuses it.
func (ln *listener) admit(tc *trackedConn) {
	s := ln.s
	defer s.wg.Done()
	if s.recoverPanics {
		defer func() {
			if p := recover(); p != nil {
				s.log.Error("panic admitting smtp connection", "remote_ip", tc.pc.RemoteIP, "panic", p)
				tc.Close()
			}
		}()
	}
	var nc net.Conn = tc
	if s.l.ImplicitTLS {
		tlsc := tls.Server(tc, s.tlsConfig)
		hctx, cancel := context.WithTimeout(s.baseCtx, s.handshakeTimeout())
		err := tlsc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			s.log.Debug("smtp tls handshake failed", "remote_ip", tc.pc.RemoteIP, "err", err)
			tc.Close()
			return
		}
		tc.pc.TLS = mailtext.TLSVersionName(tlsc.ConnectionState().Version)
		nc = tlsc
	}
	if err := tc.rs.Connect(s.baseCtx); err != nil {
		s.refuseConnect(nc, tc, err)
		return
	}
	select {
	case ln.ready <- nc:
	case <-ln.done:
		nc.Close()
	}
}

// refuseConnect answers a connection refused by on_connect and closes it.
// RFC 5321 section 3.1 allows 554 instead of the 220 greeting; a temporary
// refusal is sent as 421 (the only 4xx that closes a connection) with the
// stage's enhanced code and text.
func (s *Server) refuseConnect(nc net.Conn, tc *trackedConn, err error) {
	r := smtpError(err)
	if r.Code < 500 {
		r.Code = 421
	}
	nc.SetWriteDeadline(time.Now().Add(rejectTimeout))
	fmt.Fprintf(nc, "%d %d.%d.%d %s\r\n", r.Code, r.EnhancedCode[0], r.EnhancedCode[1], r.EnhancedCode[2], r.Message)
	nc.Close()
}

// refuse answers a connection over MaxConnections (421 4.3.2) or over a
// per-client-address limit (421 4.7.0) and closes it, in one of at most
// maxRejecters goroutines; when those are all busy the connection is
// closed without a reply. Every refusal is counted in the log.
func (s *Server) refuse(c net.Conn, reason string) {
	addr := c.RemoteAddr().String()
	select {
	case s.rejecters <- struct{}{}:
	default:
		c.Close()
		s.refusals.note(reason+", "+reasonNoReply, addr)
		return
	}
	s.refusals.note(reason, addr)
	e := errTooManyConns
	if reason != reasonBusy {
		e = errTooManyFromIP
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() { <-s.rejecters }()
		defer c.Close()
		c.SetDeadline(time.Now().Add(rejectTimeout))
		var w io.Writer = c
		if s.l.ImplicitTLS {
			tlsc := tls.Server(c, s.tlsConfig)
			if err := tlsc.Handshake(); err != nil {
				return
			}
			defer tlsc.Close()
			w = tlsc
		}
		fmt.Fprintf(w, "%d %s %s\r\n", e.Code, e.Enhanced, e.Message)
	}()
}

// trackedConn is every admitted connection's bottom layer (under TLS when
// there is TLS). It holds the connection's pipeline.Conn and its slot, and
// it intercepts read deadlines so that this package can impose its own on
// top of go-smtp's per-command ReadTimeout:
//   - during DATA/BDAT, no deadline may extend beyond the DataTimeout of
//     the whole data phase;
//   - once expired (a data timeout happened) every read fails at once, so
//     go-smtp answers 421 and closes;
//   - while the server drains, a connection outside a transaction gets an
//     expired deadline, so go-smtp closes it at its next read ("421 4.4.2");
//   - no deadline extends beyond MaxSessionTime after admission, so a
//     session (however busy) ends then with 421 4.4.2.
type trackedConn struct {
	net.Conn
	s  *Server
	pc *pipeline.Conn
	rs *relay.Session // the relay's session for pc

	mu              sync.Mutex
	sessionDeadline time.Time // MaxSessionTime after admission
	dataDeadline    time.Time // zero outside DATA/BDAT
	expired         bool
	busy            bool // inside a mail transaction (MAIL .. end of DATA/RSET)
	authFails       int  // failed AUTH attempts (connection's goroutine only)

	closeOnce sync.Once

	// Raw-stream smuggling detector (clear-text connections only): go-smtp's
	// dot reader silently drops ".\r" at the start of a line when no LF
	// follows, so a bare CR hidden that way never reaches Data. Read scans
	// for LF "." CR followed by anything but LF and raises dotCR; Data
	// consumes the flag. tail keeps the last bytes across reads.
	dotCR atomic.Bool
	tail  [3]byte
	ntail int
}

var dotCRSeq = []byte("\n.\r")

// Read scans what it returns for the hidden bare-CR sequence.
func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && c.pc != nil && c.pc.TLS == "" {
		c.scanDotCR(p[:n])
	}
	return n, err
}

func (c *trackedConn) scanDotCR(p []byte) {
	// The sequence may straddle the previous read: check the joint.
	if c.ntail > 0 {
		var joint [6]byte
		k := copy(joint[:], c.tail[:c.ntail])
		k += copy(joint[k:], p[:min(3, len(p))])
		if badDotCR(joint[:k]) {
			c.dotCR.Store(true)
		}
	}
	if badDotCR(p) {
		c.dotCR.Store(true)
	}
	if len(p) >= 3 {
		c.ntail = copy(c.tail[:], p[len(p)-3:])
	} else {
		var t [6]byte
		k := copy(t[:], c.tail[:c.ntail])
		k += copy(t[k:], p)
		if k > 3 {
			copy(t[:], t[k-3:k])
			k = 3
		}
		c.ntail = copy(c.tail[:], t[:k])
	}
}

// badDotCR reports an LF "." CR not followed by LF, when the following
// byte is in b (an incomplete match at the end is left to the next read).
func badDotCR(b []byte) bool {
	for i := 0; ; {
		j := bytes.Index(b[i:], dotCRSeq)
		if j < 0 {
			return false
		}
		j += i
		if j+3 < len(b) && b[j+3] != '\n' {
			return true
		}
		i = j + 1
	}
}

func (c *trackedConn) clampLocked(t time.Time) time.Time {
	if c.expired || (!c.busy && c.s.draining.Load()) {
		return past
	}
	if !c.dataDeadline.IsZero() && (t.IsZero() || t.After(c.dataDeadline)) {
		t = c.dataDeadline
	}
	if !c.sessionDeadline.IsZero() && (t.IsZero() || t.After(c.sessionDeadline)) {
		t = c.sessionDeadline
	}
	return t
}

func (c *trackedConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Conn.SetReadDeadline(c.clampLocked(t))
}

func (c *trackedConn) SetDeadline(t time.Time) error {
	if err := c.Conn.SetWriteDeadline(t); err != nil {
		return err
	}
	return c.SetReadDeadline(t)
}

// beginData starts the data phase: reads must end by deadline d.
func (c *trackedConn) beginData(d time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dataDeadline = d
	c.Conn.SetReadDeadline(c.clampLocked(d))
}

// endData ends the data phase. The socket keeps its current deadline, so
// go-smtp's draining of unread data stays bounded by the data deadline.
func (c *trackedConn) endData() {
	c.mu.Lock()
	c.dataDeadline = time.Time{}
	c.mu.Unlock()
}

// dataDeadlinePassed reports whether the data phase's deadline has passed.
func (c *trackedConn) dataDeadlinePassed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.dataDeadline.IsZero() && !time.Now().Before(c.dataDeadline)
}

// expire makes every further read fail at once.
func (c *trackedConn) expire() {
	c.mu.Lock()
	c.expired = true
	c.Conn.SetReadDeadline(past)
	c.mu.Unlock()
}

func (c *trackedConn) setBusy(b bool) {
	c.mu.Lock()
	c.busy = b
	c.mu.Unlock()
}

// kickIfIdle wakes a connection blocked reading its next command outside a
// transaction so go-smtp closes it; the server is draining.
func (c *trackedConn) kickIfIdle() {
	c.mu.Lock()
	if !c.busy {
		c.Conn.SetReadDeadline(past)
	}
	c.mu.Unlock()
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() { c.s.untrack(c) })
	return err
}

// trackedOf finds the trackedConn under a connection go-smtp holds.
func trackedOf(nc net.Conn) *trackedConn {
	if t, ok := nc.(*tls.Conn); ok {
		nc = t.NetConn()
	}
	tc, _ := nc.(*trackedConn)
	return tc
}

// remoteAddrPort returns the peer's address with IPv4-mapped IPv6 unmapped.
func remoteAddrPort(c net.Conn) netip.AddrPort {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}
