package delivery

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sluice-mta/sluice/internal/mailtext"
	"github.com/sluice-mta/sluice/pipeline"
)

// Session is one SMTP connection to one remote server, past the greeting,
// EHLO, STARTTLS and AUTH, ready to carry any number of mail transactions
// (Send) until Close. Dialer.Dial returns it.
//
// A Session is not safe for concurrent use: one goroutine at a time may call
// its methods (the queue owns it, sends through it, parks it while idle and
// closes it). Check Usable before every reuse.
type Session struct {
	raw  net.Conn // the TCP connection: deadlines and probes go here
	conn net.Conn // raw, or the TLS connection on top of it
	br   *bufio.Reader
	bw   *bufio.Writer

	remote     pipeline.Remote
	routeKind  string // the route's Kind (requireTLSRefusal)
	ext        map[string]string
	pipelining bool
	cmdTimeout time.Duration
	dataTime   time.Duration

	broken   error // why the connection cannot be used any more
	closed   bool
	messages int
	// until is the deadline arm last set on raw (zero: none): Usable
	// clears it only when it has passed.
	until time.Time
	// rc is raw's syscall.RawConn for Usable's probe (nil: none), taken
	// once rather than at every reuse.
	rc syscall.RawConn
	// watched is the context Deliver's I/O is bound to (see
	// watchDeliveries); unwatch ends that.
	watched context.Context
	unwatch func()
	// verifyErr is why the certificate of an unverified (opportunistic)
	// TLS session did not verify; TLS reporting classifies it.
	verifyErr error
}

func newSession(conn net.Conn, remote pipeline.Remote, cmdTimeout, dataTimeout time.Duration) *Session {
	s := &Session{raw: conn, remote: remote, cmdTimeout: cmdTimeout, dataTime: dataTimeout}
	s.setConn(conn)
	if sc, ok := conn.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			s.rc = rc
		}
	}
	return s
}

func (s *Session) setConn(c net.Conn) {
	s.conn = c
	s.br = bufio.NewReaderSize(c, 4096)
	s.bw = bufio.NewWriterSize(c, 8192)
}

// Remote returns the server this session talks to: its host name (the MX
// host, the relay host, or the domain itself for an implicit MX), its IP,
// and the TLS version ("TLS1.3", "TLS1.2") or "" in clear text.
func (s *Session) Remote() pipeline.Remote { return s.remote }

// Extension reports whether the server advertised the EHLO keyword ext
// (case-insensitive) and its parameters, e.g. Extension("SIZE") →
// "10240000", true.
func (s *Session) Extension(ext string) (string, bool) {
	v, ok := s.ext[strings.ToUpper(ext)]
	return v, ok
}

// Pipelining reports whether Send pipelines commands (RFC 2920) on this
// session: the server offered PIPELINING and the Dialer did not disable it.
func (s *Session) Pipelining() bool { return s.pipelining }

// Messages returns how many transactions Send has started on this session.
func (s *Session) Messages() int { return s.messages }

// Usable reports whether another Send may be attempted: the session is not
// closed, no earlier failure left the connection in an unknown state, and
// the server has neither closed the connection nor sent anything
// unsolicited (such as a 421 on an idle timeout) while it sat idle. The
// last check is a non-blocking peek at the socket, cheap enough to call
// before every reuse.
func (s *Session) Usable() bool {
	if s.closed || s.broken != nil {
		return false
	}
	if s.br.Buffered() > 0 {
		s.broken = errors.New("unsolicited data from server")
		return false
	}
	if s.watched != nil && s.watched.Err() != nil {
		// The context Deliver watches ended since the last message (a
		// caller's per-call context cancelled once Send returned, or the
		// queue stopping): its callback set a past deadline, but the
		// connection is as good as before. Drop the watch (waiting for the
		// callback) and clear that deadline below; a Deliver under the
		// ended context still sends nothing (arm).
		s.stopWatching()
		s.until = aLongTimeAgo
	}
	if !s.until.IsZero() && !time.Now().Before(s.until) {
		// A past deadline would fail the probe. (One still ahead, the
		// usual case on a busy connection, is left: clearing it cost a
		// deadline update per message.)
		s.raw.SetDeadline(time.Time{})
		s.until = time.Time{}
	}
	switch peekSocket(s.rc) {
	case peekIdle:
		return true
	case peekClosed:
		s.broken = errors.New("server closed the connection")
		return false
	case peekData:
		if _, isTLS := s.conn.(*tls.Conn); !isTLS {
			s.broken = errors.New("unsolicited data from server")
			return false
		}
		// TLS: the pending bytes may be a post-handshake message (a
		// session ticket) that carries no data for us. Let crypto/tls
		// consume them, waiting only briefly for application data.
		s.raw.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
		_, err := s.br.Peek(1)
		s.raw.SetReadDeadline(time.Time{})
		if err == nil {
			s.broken = errors.New("unsolicited data from server")
			return false
		}
		if !isTimeout(err) {
			s.broken = err
			return false
		}
		return true
	}
	return true // the probe is not available for this connection type
}

// Close ends the session: QUIT (waiting at most 10 seconds for the reply)
// if the connection is still in a known state, then closes the connection.
// It is safe to call more than once.
func (s *Session) Close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	s.stopWatching()
	if s.broken == nil {
		s.raw.SetDeadline(time.Now().Add(min(s.cmdTimeout, 10*time.Second)))
		if _, err := s.bw.WriteString("QUIT\r\n"); err == nil {
			if err := s.bw.Flush(); err == nil {
				if _, err := readReply(s.br); err == nil {
					// Wait (briefly) for the server to close first: until
					// it has, it still counts this connection against our
					// connection limit for its site (shaping), and a new
					// connection opened at once would exceed it.
					s.raw.SetDeadline(time.Now().Add(250 * time.Millisecond))
					_, _ = s.br.ReadByte()
				}
			}
		}
	}
	return s.conn.Close()
}

// aLongTimeAgo is a deadline that has passed: it interrupts blocked I/O.
var aLongTimeAgo = time.Unix(1, 0)

// arm sets the connection deadline for the next exchange: now+d, or ctx's
// deadline if sooner, or the past if ctx is already done.
func (s *Session) arm(ctx context.Context, d time.Duration) {
	t := time.Now().Add(d)
	if dl, ok := ctx.Deadline(); ok && dl.Before(t) {
		t = dl
	}
	s.raw.SetDeadline(t)
	s.until = t
	if ctx.Err() != nil {
		s.raw.SetDeadline(aLongTimeAgo)
	}
}

// watch interrupts the connection's I/O when ctx is cancelled, until the
// returned stop function is called. stop waits for a callback already
// running, so no stale deadline is set after it returns.
func (s *Session) watch(ctx context.Context) (stop func()) {
	if ctx.Done() == nil {
		return func() {}
	}
	done := make(chan struct{})
	unregister := context.AfterFunc(ctx, func() {
		defer close(done)
		s.raw.SetDeadline(aLongTimeAgo)
	})
	return func() {
		if !unregister() {
			<-done
		}
	}
}

// watchDeliveries is watch for Deliver: the queue delivers every message
// of a session under the same context, so the watch is registered at the
// first Deliver and kept until Close (or a Deliver under another context),
// instead of a registration, a channel and a closure per message. The
// callback may then fire between transactions: the next Deliver sees ctx
// done and sends nothing, and Usable drops the ended watch and clears the
// past deadline it left (the connection itself is fine).
func (s *Session) watchDeliveries(ctx context.Context) {
	if ctx == s.watched {
		return
	}
	s.stopWatching()
	s.watched, s.unwatch = ctx, s.watch(ctx)
}

// stopWatching ends watchDeliveries' watch; a callback already running
// has finished when it returns.
func (s *Session) stopWatching() {
	if s.unwatch != nil {
		s.unwatch()
		s.watched, s.unwatch = nil, nil
	}
}

// cmd sends one command and reads its reply within the command timeout.
func (s *Session) cmd(ctx context.Context, line string) (reply, error) {
	s.arm(ctx, s.cmdTimeout)
	s.bw.WriteString(line)
	s.bw.WriteString("\r\n")
	if err := s.bw.Flush(); err != nil {
		return reply{}, err
	}
	return readReply(s.br)
}

// fail marks the connection unusable and returns e.
func (s *Session) fail(e *pipeline.Error) *pipeline.Error {
	if s.broken == nil {
		s.broken = e
	}
	return e
}

// greet reads the server's greeting.
func (s *Session) greet(ctx context.Context) error {
	s.arm(ctx, s.cmdTimeout)
	r, err := readReply(s.br)
	if err != nil {
		return s.fail(ioError(ctx, err, "greeting", s.remote))
	}
	if r.code != 220 {
		return s.fail(replyError(r, "greeting", s.remote))
	}
	return nil
}

// hello sends EHLO, falling back to HELO when the server rejects EHLO with
// a permanent error, and records the extensions.
func (s *Session) hello(ctx context.Context, name string) error {
	r, err := s.cmd(ctx, "EHLO "+name)
	if err != nil {
		return s.fail(ioError(ctx, err, "EHLO", s.remote))
	}
	if r.code == 250 {
		s.ext = parseExtensions(r)
		return nil
	}
	if r.code < 500 || r.code > 599 {
		return s.fail(replyError(r, "EHLO", s.remote))
	}
	r, err = s.cmd(ctx, "HELO "+name)
	if err != nil {
		return s.fail(ioError(ctx, err, "HELO", s.remote))
	}
	if r.code != 250 {
		return s.fail(replyError(r, "HELO", s.remote))
	}
	s.ext = map[string]string{}
	return nil
}

// errTLSRefused means the server answered STARTTLS with an error: the
// session is still usable in clear text.
type tlsRefused struct{ e *pipeline.Error }

func (t *tlsRefused) Error() string { return t.e.Error() }

// startTLS runs STARTTLS and the handshake. A refusal of the command
// returns *tlsRefused and leaves the session usable in clear text; any
// other failure marks it broken.
func (s *Session) startTLS(ctx context.Context, cfg *tls.Config) error {
	r, err := s.cmd(ctx, "STARTTLS")
	if err != nil {
		return s.fail(ioError(ctx, err, "STARTTLS", s.remote))
	}
	if r.code != 220 {
		e := replyError(r, "STARTTLS", s.remote)
		if r.code == 421 {
			return s.fail(e)
		}
		return &tlsRefused{e}
	}
	if s.br.Buffered() > 0 {
		return s.fail(&pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 7, 5},
			Message: "TLS handshake failed: server sent data before it", Cause: errInjection})
	}
	tc := tls.Client(s.raw, cfg)
	s.arm(ctx, s.cmdTimeout)
	if err := tc.HandshakeContext(ctx); err != nil {
		return s.fail(&pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 7, 5},
			Message: "TLS handshake failed: " + tlsReason(err),
			Cause:   err})
	}
	s.setConn(tc)
	cs := tc.ConnectionState()
	s.remote.TLS = tlsVersion(cs.Version)
	s.remote.TLSCipher = tls.CipherSuiteName(cs.CipherSuite)
	// A VerifyConnection (DANE's TLSA match, see daneTLS) that passed
	// validated the peer in its own way.
	s.remote.TLSValidated = true
	if cfg.InsecureSkipVerify && cfg.VerifyConnection == nil {
		s.verifyErr = verifyPeer(cs, cfg)
		s.remote.TLSValidated = s.verifyErr == nil
	}
	s.ext = nil
	return nil
}

// tlsReason is a short, client-safe reason for a handshake failure.
func tlsReason(err error) string {
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
	)
	switch {
	case errors.As(err, &unknown):
		return "certificate signed by unknown authority"
	case errors.As(err, &hostname):
		return "certificate is not valid for this host name"
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		return "timeout"
	}
	var ce *tls.CertificateVerificationError
	if errors.As(err, &ce) {
		return "certificate verification failed"
	}
	return "handshake error"
}

func tlsVersion(v uint16) string {
	return strings.ReplaceAll(tls.VersionName(v), " ", "")
}

// auth authenticates with AUTH PLAIN (RFC 4616) with an initial response.
// Any failure is temporary: wrong credentials for a relay are an operator's
// problem to fix, not a reason to bounce mail.
func (s *Session) auth(ctx context.Context, user, pass string) error {
	mechs, ok := s.ext["AUTH"]
	if !ok || !hasWord(mechs, "PLAIN") {
		return &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 7, 4},
			Message: "AUTH PLAIN not offered"}
	}
	ir := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
	r, err := s.cmd(ctx, "AUTH PLAIN "+ir)
	if err != nil {
		return s.fail(ioError(ctx, err, "AUTH", s.remote))
	}
	if r.code == 334 { // a server that ignores initial responses
		r, err = s.cmd(ctx, ir)
		if err != nil {
			return s.fail(ioError(ctx, err, "AUTH", s.remote))
		}
	}
	if r.code != 235 {
		e := replyError(r, "AUTH", s.remote)
		if r.code == 421 || r.code == 334 {
			return s.fail(e)
		}
		return &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 7, 8},
			Message: "authentication failed: " + r.String(), Cause: e.Cause}
	}
	return nil
}

func hasWord(list, w string) bool {
	for _, f := range strings.Fields(list) {
		if strings.EqualFold(f, w) {
			return true
		}
	}
	return false
}

// Send is Deliver for an envelope without parameters, reporting only each
// recipient's error: perRcpt has one entry per recipient, nil when the
// server accepted the message for it. See Deliver.
func (s *Session) Send(ctx context.Context, from string, rcpts []string, data []byte) (perRcpt []error, err error) {
	env := &Envelope{From: from, Rcpts: make([]Rcpt, len(rcpts))}
	for i, r := range rcpts {
		env.Rcpts[i].Addr = r
	}
	res, err := s.Deliver(ctx, env, data)
	perRcpt = make([]error, len(res))
	for i := range res {
		perRcpt[i] = res[i].Err
	}
	return perRcpt, err
}

// Deliver runs one mail transaction: MAIL FROM, one RCPT TO per recipient,
// and DATA when at least one recipient was accepted. data is the message
// with CRLF line endings; Deliver dot-stuffs it. env.From may be "" (the
// null sender, for bounces). Addresses go out byte for byte inside <...>.
//
// results always has one entry per recipient, in order (see Result): the
// error (nil: accepted), the reply that decided it, and whether the next
// hop took over DSN duties. Classify each error with pipeline.IsTemporary;
// Rules is the table of how replies are classified.
//
// err is non-nil when the transaction failed as a whole because of the
// connection: it was lost, timed out, ctx was cancelled, or the server
// said 421. err is then a temporary *pipeline.Error (451 4.4.2, or the
// 421) and every recipient without a reply of its own carries it too; the
// session is no longer Usable. An outcome the server did report — MAIL,
// RCPT or DATA rejected — is never err.
//
// Extensions, per next hop:
//   - BODY=8BITMIME is declared when the content is 8-bit (MessageNeeds:
//     the bytes, not the client's declaration) and the server offers
//     8BITMIME. 8-bit content for a server without
//     8BITMIME fails every recipient with 554 5.6.3: Sluice does not
//     convert to 7 bit (RFC 6152 section 3 allows either).
//   - SMTPUTF8 is requested when the message asked for it, or an address
//     is not ASCII, and the server offers it. Without it, a message that
//     needs it (MessageNeeds: a non-ASCII sender, or UTF-8 in a header of
//     a message that asked for SMTPUTF8) fails every recipient and a
//     non-ASCII recipient address fails that recipient, with 553 5.6.7
//     (RFC 6531 section 3.5); nothing is downgraded. An all-ASCII message
//     that asked for SMTPUTF8 goes without it.
//   - RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT (RFC 3461, xtext
//     encoded) go only to a server that offers DSN; to others nothing.
//   - SIZE is declared when offered; a message over the server's limit
//     fails every recipient with 552 5.3.4, without a round trip.
//   - REQUIRETLS (RFC 8689, env.Params.RequireTLS) is sent only over a
//     session that qualifies (validated TLS under a policy, REQUIRETLS
//     offered; requiretls.go); over any other every recipient fails with
//     550 5.7.30 and nothing is sent, except for a DSN this relay
//     generated (null sender, env.OwnReport), which goes without it.
//
// Recipients are also failed locally when an address holds control
// characters or angle brackets (553 5.1.3 / 553 5.1.7).
//
// With PIPELINING, MAIL, every RCPT and DATA go out in one write, and the
// message and its terminator in a second: two round trips per message.
// Without it, one round trip per command. After a transaction that ended
// before the final reply (no recipient accepted, DATA refused) Deliver
// issues RSET, so the session can carry the next message.
func (s *Session) Deliver(ctx context.Context, env *Envelope, data []byte) (results []Result, err error) {
	rcpts := env.Rcpts
	from := env.From
	per := make([]error, len(rcpts))
	var final *reply
	_, dsn := s.ext["DSN"]
	finish := func() []Result {
		res := make([]Result, len(per))
		for i, e := range per {
			res[i].Err = e
			switch {
			case e != nil:
				res[i].Reply = pipeline.ResponseOf(e)
			case final != nil:
				enh, text := final.split()
				if enh == (pipeline.EnhancedCode{}) {
					enh = pipeline.EnhancedCode{final.code / 100, 0, 0}
				}
				res[i].Reply = &pipeline.Response{Code: final.code, Enhanced: enh.String(), Text: text}
				res[i].DSN = dsn
			}
		}
		return res
	}
	if len(rcpts) == 0 {
		return finish(), nil
	}
	fillAll := func(e error) {
		for i := range per {
			if per[i] == nil {
				per[i] = e
			}
		}
	}
	if s.closed || s.broken != nil {
		e := &pipeline.Error{Code: 451, Enhanced: pipeline.EnhancedCode{4, 4, 2},
			Message: "connection no longer usable",
			Cause:   &connError{fmt.Errorf("session unusable: %v", s.broken)}}
		fillAll(e)
		return finish(), e
	}
	if ctx.Err() != nil {
		e := ioError(ctx, ctx.Err(), "MAIL", s.remote)
		fillAll(e)
		return finish(), e
	}

	// Local checks.
	_, smtputf8 := s.ext["SMTPUTF8"]
	_, eightBitMIME := s.ext["8BITMIME"]
	needs := MessageNeeds(env, data)
	switch {
	case !validAddress(from):
		fillAll(pipeline.Errorf(553, pipeline.EnhancedCode{5, 1, 7}, "invalid sender address"))
		return finish(), nil
	case needs.SMTPUTF8 && !smtputf8:
		what := "this message"
		if !mailtext.IsASCII(from) {
			what = "a non-ASCII sender address"
		}
		fillAll(pipeline.Errorf(553, pipeline.EnhancedCode{5, 6, 7},
			"remote server does not support SMTPUTF8, needed for %s", what))
		return finish(), nil
	case needs.EightBit && !eightBitMIME:
		fillAll(pipeline.Errorf(554, pipeline.EnhancedCode{5, 6, 3},
			"remote server does not support 8BITMIME, needed for this message's 8-bit content (not converted to 7 bit)"))
		return finish(), nil
	}
	requireTLS, refusal := s.requireTLSParam(env)
	if refusal != nil {
		fillAll(refusal)
		return finish(), nil
	}
	if max, ok := s.maxSize(); ok && int64(len(data)) > max {
		fillAll(pipeline.Errorf(552, pipeline.EnhancedCode{5, 3, 4},
			"message size %d exceeds the remote server's limit of %d bytes", len(data), max))
		return finish(), nil
	}
	utf8 := needs.AskUTF8 && smtputf8
	idx := make([]int, 0, len(rcpts)) // recipients we send
	for i, r := range rcpts {
		switch {
		case r.Addr == "" || !validAddress(r.Addr):
			per[i] = pipeline.Errorf(553, pipeline.EnhancedCode{5, 1, 3}, "invalid recipient address")
		case !mailtext.IsASCII(r.Addr) && !smtputf8:
			per[i] = pipeline.Errorf(553, pipeline.EnhancedCode{5, 6, 7},
				"remote server does not support SMTPUTF8, needed for a non-ASCII recipient address")
		default:
			idx = append(idx, i)
			utf8 = utf8 || !mailtext.IsASCII(r.Addr)
		}
	}
	if len(idx) == 0 {
		return finish(), nil
	}

	s.messages++
	s.watchDeliveries(ctx)

	var mail strings.Builder
	mail.WriteString("MAIL FROM:<")
	mail.WriteString(from)
	mail.WriteByte('>')
	if needs.EightBit {
		mail.WriteString(" BODY=8BITMIME")
	}
	if _, ok := s.ext["SIZE"]; ok {
		mail.WriteString(" SIZE=")
		mail.WriteString(strconv.Itoa(len(data)))
	}
	if utf8 {
		mail.WriteString(" SMTPUTF8")
	}
	mail.WriteString(requireTLS)
	if dsn {
		mail.WriteString(dsnMailParams(env.Params))
	}
	rcptLine := func(i int) string {
		l := "RCPT TO:<" + rcpts[i].Addr + ">"
		if dsn {
			l += dsnRcptParams(rcpts[i].Params)
		}
		return l
	}

	// brokenWith ends the transaction on a connection-level failure: every
	// recipient without its own reply gets e.
	brokenWith := func(e *pipeline.Error) ([]Result, error) {
		s.fail(e)
		fillAll(e)
		return finish(), e
	}
	// closing handles a 421 reply: the server is going away.
	closing := func(r reply, cmd string) ([]Result, error) {
		return brokenWith(replyError(r, cmd, s.remote))
	}

	// Envelope.
	var (
		mailRep  reply
		rcptRep  = make([]reply, len(idx))
		dataRep  reply
		dataSent bool
	)
	if s.pipelining {
		s.arm(ctx, s.cmdTimeout)
		s.bw.WriteString(mail.String())
		s.bw.WriteString("\r\n")
		for _, i := range idx {
			s.bw.WriteString(rcptLine(i))
			s.bw.WriteString("\r\n")
		}
		s.bw.WriteString("DATA\r\n")
		if err := s.bw.Flush(); err != nil {
			return brokenWith(ioError(ctx, err, "MAIL", s.remote))
		}
		if mailRep, err = readReply(s.br); err != nil {
			return brokenWith(ioError(ctx, err, "MAIL", s.remote))
		}
		if mailRep.code == 421 {
			return closing(mailRep, "MAIL")
		}
		for k, i := range idx {
			if rcptRep[k], err = readReply(s.br); err != nil {
				return brokenWith(ioError(ctx, err, "RCPT", s.remote))
			}
			if rcptRep[k].code == 421 {
				return closing(rcptRep[k], "RCPT")
			}
			if mailRep.code/100 == 2 && rcptRep[k].code/100 != 2 {
				per[i] = replyError(rcptRep[k], "RCPT", s.remote)
			}
		}
		if dataRep, err = readReply(s.br); err != nil {
			return brokenWith(ioError(ctx, err, "DATA", s.remote))
		}
		dataSent = true
	} else {
		if mailRep, err = s.cmd(ctx, mail.String()); err != nil {
			return brokenWith(ioError(ctx, err, "MAIL", s.remote))
		}
		if mailRep.code == 421 {
			return closing(mailRep, "MAIL")
		}
		if mailRep.code/100 == 2 {
			for k, i := range idx {
				if rcptRep[k], err = s.cmd(ctx, rcptLine(i)); err != nil {
					return brokenWith(ioError(ctx, err, "RCPT", s.remote))
				}
				if rcptRep[k].code == 421 {
					return closing(rcptRep[k], "RCPT")
				}
				if rcptRep[k].code/100 != 2 {
					per[i] = replyError(rcptRep[k], "RCPT", s.remote)
				}
			}
		}
	}

	if mailRep.code/100 != 2 {
		// Sender refused: that is every recipient's answer. Pipelined
		// RCPTs and DATA were refused as out of sequence.
		e := replyError(mailRep, "MAIL", s.remote)
		for _, i := range idx {
			per[i] = e
		}
		if dataSent && dataRep.code == 354 {
			s.abortData(ctx)
		}
		if dataSent && dataRep.code == 421 {
			return finish(), s.fail(replyError(dataRep, "DATA", s.remote))
		}
		return finish(), nil
	}
	accepted := 0
	for _, i := range idx {
		if per[i] == nil {
			accepted++
		}
	}
	if accepted == 0 {
		if dataSent && dataRep.code == 354 {
			s.abortData(ctx)
		}
		if dataSent && dataRep.code == 421 {
			return finish(), s.fail(replyError(dataRep, "DATA", s.remote))
		}
		s.rset(ctx)
		return finish(), nil
	}
	if !dataSent {
		if dataRep, err = s.cmd(ctx, "DATA"); err != nil {
			return brokenWith(ioError(ctx, err, "DATA", s.remote))
		}
	}
	if dataRep.code != 354 {
		if dataRep.code == 421 {
			return closing(dataRep, "DATA")
		}
		fillAll(replyError(dataRep, "DATA", s.remote))
		s.rset(ctx)
		return finish(), nil
	}

	// Content.
	s.arm(ctx, s.dataTime)
	writeData(s.bw, data)
	if err := s.bw.Flush(); err != nil {
		return brokenWith(ioError(ctx, err, "message data", s.remote))
	}
	r, err := readReply(s.br)
	if err != nil {
		return brokenWith(ioError(ctx, err, "end of data", s.remote))
	}
	switch {
	case r.code/100 == 2:
		final = &r
		return finish(), nil
	case r.code == 421:
		return closing(r, "end of data")
	}
	fillAll(replyError(r, "end of data", s.remote))
	return finish(), nil
}

// abortData ends a DATA that a pipelining server accepted although no
// recipient was: an empty message, whose reply does not matter.
func (s *Session) abortData(ctx context.Context) {
	s.arm(ctx, s.cmdTimeout)
	s.bw.WriteString(".\r\n")
	if err := s.bw.Flush(); err != nil {
		s.fail(ioError(ctx, err, "DATA", s.remote))
		return
	}
	if _, err := readReply(s.br); err != nil {
		s.fail(ioError(ctx, err, "DATA", s.remote))
	}
}

// rset resets the transaction; if that fails the session is unusable.
func (s *Session) rset(ctx context.Context) {
	r, err := s.cmd(ctx, "RSET")
	if err != nil {
		s.fail(ioError(ctx, err, "RSET", s.remote))
		return
	}
	if r.code/100 != 2 {
		s.fail(replyError(r, "RSET", s.remote))
	}
}

// maxSize returns the server's SIZE limit, if it announced one.
func (s *Session) maxSize() (int64, bool) {
	v, ok := s.ext["SIZE"]
	if !ok || v == "" {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
	if err != nil || n <= 0 {
		return 0, false
	}
	return n, true
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// verifyPeer verifies the server's certificate chain for cfg.ServerName
// against cfg.RootCAs (nil: the system pool), as crypto/tls does when
// InsecureSkipVerify is false: it tells whether an opportunistic session
// was in fact validated.
func verifyPeer(cs tls.ConnectionState, cfg *tls.Config) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		DNSName: cfg.ServerName, Roots: cfg.RootCAs, Intermediates: inter})
	return err
}
