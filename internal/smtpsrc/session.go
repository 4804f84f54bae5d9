package smtpsrc

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/internal/mailtext"
	"github.com/sluice-mta/sluice/internal/relay"
	"github.com/sluice-mta/sluice/internal/token"
	"github.com/sluice-mta/sluice/pipeline"
)

// backend is the go-smtp Backend: go-smtp calls NewSession at the first
// EHLO/HELO of a connection, and again at the first EHLO after STARTTLS
// (it logs the old session out first).
type backend struct{ s *Server }

// NewSession runs on_helo for the connection's pipeline.Conn (on_connect
// already ran when the connection was admitted). A refusal is returned as
// an *smtp.SMTPError, which go-smtp writes with its own code; the client
// must then greet again before MAIL.
func (b backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	s := b.s
	tc := trackedOf(c.Conn())
	if tc == nil {
		// Not one of ours: go-smtp served a listener other than ours.
		return nil, smtpError(errors.New("smtpsrc: connection was not admitted by this server"))
	}
	if s.draining.Load() {
		return nil, smtpError(errShuttingDown)
	}
	pc := tc.pc
	pc.Identity = nil // a new session (e.g. after STARTTLS) starts unauthenticated
	if st, ok := c.TLSConnectionState(); ok {
		pc.TLS = mailtext.TLSVersionName(st.Version)
	}
	ctx, cancel := context.WithCancel(s.baseCtx)
	if err := tc.rs.Helo(ctx, c.Hostname()); err != nil {
		cancel()
		return nil, smtpError(err)
	}
	return &session{s: s, sc: c, tc: tc, conn: pc, ctx: ctx, cancel: cancel}, nil
}

// session is one go-smtp session: from EHLO to QUIT, or to STARTTLS, which
// starts a new session on the same connection and pipeline.Conn.
//
// go-smtp calls the Session methods from the connection's goroutine,
// except that with BDAT it runs Data in a goroutine of its own, and Reset
// and Logout may then run concurrently with it; txn is guarded by mu for
// that reason. Logout may also come from Server.Close's goroutine.
//
// SMTP AUTH is its AuthSession implementation (auth.go), which calls
// relay.Session.Login.
type session struct {
	s      *Server
	sc     *smtp.Conn
	tc     *trackedConn
	conn   *pipeline.Conn
	ctx    context.Context // cancelled by Logout, or by Server.Close / an expired Shutdown
	cancel context.CancelFunc

	mu  sync.Mutex
	txn *relay.Txn // nil outside a transaction

	declaredSize int64 // MAIL SIZE= of the current transaction (0: none)
	rcptCap      int   // recipients per transaction of a token's max_rcpts (0: none; auth.go)
	// token is the claims of the token the session authenticated with
	// (nil: none); checked again at every MAIL (auth.go checkToken).
	token *token.Claims

	// poisoned is set when a message hid a bare CR from go-smtp: bytes
	// read ahead of it may already sit in go-smtp's buffer, so no further
	// transaction is accepted on this connection.
	poisoned atomic.Bool
}

var _ smtp.Session = (*session)(nil)

func (ss *session) current() *relay.Txn {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.txn
}

// Reset ends the transaction (RSET, re-EHLO, after DATA). A transaction
// still open is abandoned: nothing is recorded.
func (ss *session) Reset() {
	ss.mu.Lock()
	t := ss.txn
	ss.txn = nil
	ss.mu.Unlock()
	if t != nil {
		t.Abort()
	}
	ss.tc.setBusy(false)
}

// Logout ends the session: its context is cancelled.
func (ss *session) Logout() error {
	ss.cancel()
	ss.Reset()
	return nil
}

// Mail starts a transaction: a new Txn with a fresh message id, then
// on_mail. A re-EHLO with a new name runs on_helo again first (go-smtp
// creates no new session for it).
func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	s := ss.s
	if s.draining.Load() {
		return smtpError(errShuttingDown)
	}
	if ss.poisoned.Load() {
		return smtpError(errPoisoned)
	}
	if err := ss.checkAuthRequired(); err != nil {
		return err
	}
	if err := ss.checkToken(); err != nil {
		return err
	}
	if h := ss.sc.Hostname(); h != ss.conn.HELO {
		// A refused name is kept out of conn.HELO, so it is checked
		// again (and refused again) at the next MAIL.
		if err := ss.tc.rs.Helo(ss.ctx, h); err != nil {
			return smtpError(err)
		}
	}
	params := mailParams(opts)
	if !params.SMTPUTF8 && !mailtext.IsASCII(from) {
		return smtpError(errNeedSMTPUTF8)
	}
	ss.tc.setBusy(true)
	// The relay parses from (go-smtp gives it in canonical form, quotes
	// kept) and refuses what is not an address with 501 5.1.7.
	txn, err := ss.tc.rs.BeginWith(ss.ctx, from, params, nil, nil)
	if err != nil {
		ss.tc.setBusy(false)
		return smtpError(err)
	}
	ss.mu.Lock()
	ss.txn = txn
	ss.declaredSize = 0
	if opts != nil {
		ss.declaredSize = opts.Size
	}
	ss.mu.Unlock()
	return nil
}

// Rcpt runs on_rcpt (which includes relay control) for one recipient. The
// recipient count limit (452 4.5.3) is go-smtp's MaxRecipients, checked
// before Rcpt is called. The relay records a refusal. A repeated
// recipient is accepted once.
func (ss *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	txn := ss.current()
	if txn == nil {
		return smtpError(errBadSequence)
	}
	if !txn.T.Params.SMTPUTF8 && !mailtext.IsASCII(to) {
		return smtpError(errNeedSMTPUTF8)
	}
	if ss.rcptCap > 0 && len(txn.T.Recipients) >= ss.rcptCap {
		return smtpError(errTokenRcptCap)
	}
	if _, err := txn.RcptWith(ss.ctx, to, rcptParams(opts)); err != nil {
		return smtpError(err)
	}
	return nil
}

// Data receives the message (DATA or BDAT), checks and parses it, adds the
// Received: field and submits it. It always returns an *smtp.SMTPError,
// 250 included, so go-smtp never invents a reply text of its own.
func (ss *session) Data(r io.Reader) error {
	s := ss.s
	txn := ss.current()
	if txn == nil || len(txn.T.Recipients) == 0 {
		return smtpError(errBadSequence)
	}
	ss.tc.beginData(time.Now().Add(s.l.DataTimeout))
	defer ss.tc.endData()
	defer ss.tc.dotCR.Store(false) // a hidden bare CR belongs to this message only

	// The message is received in memory up to SpillThreshold, the rest
	// into an unlinked temporary file; after the end of data it is held
	// in memory until it is committed. Its buffers are charged to the
	// listener's in-flight budget (MaxInflightBytes) as they grow, and it
	// is refused with 452 4.3.1 when the budget cannot take it.
	ss.mu.Lock()
	hint := ss.declaredSize
	ss.mu.Unlock()
	if hint > s.l.MaxMessageSize {
		hint = 0 // go-smtp refused it at MAIL; never size a buffer by it
	}
	raw, charged, err := receiveData(getBuf(), r, s.l.MaxMessageSize, hint, &s.inflight, s.l.SpillThreshold, s.spillDir)
	defer func() { s.inflight.release(charged); putBuf(raw) }()
	if err != nil {
		return ss.dataReadFailed(txn, err)
	}
	data := raw
	bare, nul, longest := scanData(data)
	if ss.tc.dotCR.Load() && !s.normalize {
		bare = true // go-smtp removed a ".\r" hidden at the start of a line
		ss.poisoned.Store(true)
	}
	if nul {
		return ss.refuseData(txn, len(data), errNUL)
	}
	if bare {
		if !s.normalize {
			return ss.refuseData(txn, len(data), pipeline.ErrBareLineEnding)
		}
		n := int64(len(data) + len(data)/32 + 16)
		if !s.inflight.reserve(n) {
			return ss.overBudget(txn, len(data))
		}
		defer s.inflight.release(n)
		data = normalizeLineEndings(make([]byte, 0, n), data)
		_, _, longest = scanData(data)
	}
	// The line limit applies to message lines, after the whole message
	// (DATA or BDAT, whatever the chunk boundaries): one reply, after the
	// end of data (RFC 5321 section 4.1.1.4). go-smtp does not apply it to
	// message data.
	if longest > s.l.MaxLineLength {
		return ss.refuseData(txn, len(data), errLineTooLong)
	}

	msg, err := pipeline.ParseMessage(txn.T, data)
	if err != nil {
		return ss.refuseData(txn, len(data), err)
	}
	// A mail loop: the message has passed max_hops MTAs already.
	if len(msg.Header.Values("Received")) >= s.l.MaxHops {
		return ss.refuseData(txn, len(data), errTooManyHops)
	}
	// Committing serialises the message once more (header and body).
	commitCost := int64(len(data)) + 4096
	if !s.inflight.reserve(commitCost) {
		return ss.overBudget(txn, len(data))
	}
	defer s.inflight.release(commitCost)
	// One reply for all recipients: recipients refused at on_route get a
	// DSN. The relay logs and records the outcome.
	if _, err := txn.Commit(ss.ctx, msg, relay.CommitOptions{OneReply: true}); err != nil {
		if ss.ctx.Err() != nil {
			// The session is gone (client hung up, server closing):
			// nobody to answer and nothing refused.
			s.log.Debug("submit aborted", "conn", ss.conn.ID, "msgid", txn.ID(), "err", err)
		}
		return smtpError(err)
	}
	return okReply(txn.ID())
}

// mailParams are the MAIL FROM parameters that travel with the message.
// go-smtp has checked them (BODY, RET values; ENVID xtext, printable).
func mailParams(o *smtp.MailOptions) pipeline.MailParams {
	if o == nil {
		return pipeline.MailParams{}
	}
	return pipeline.MailParams{Body: string(o.Body), SMTPUTF8: o.UTF8, Ret: string(o.Return), EnvID: o.EnvelopeID,
		RequireTLS: o.RequireTLS}
}

// rcptParams are the RCPT TO parameters of RFC 3461. go-smtp has checked
// NOTIFY (NEVER alone, no repeats) and decoded ORCPT; the address type is
// written in lower case ("rfc822;bob@example.org", "utf-8;...").
func rcptParams(o *smtp.RcptOptions) pipeline.RcptParams {
	var p pipeline.RcptParams
	if o == nil {
		return p
	}
	for _, n := range o.Notify {
		p.Notify = append(p.Notify, string(n))
	}
	if o.OriginalRecipient != "" {
		p.ORCPT = strings.ToLower(string(o.OriginalRecipientType)) + ";" + o.OriginalRecipient
	}
	return p
}

// dataReadFailed maps a failure while reading the message data.
func (ss *session) dataReadFailed(txn *relay.Txn, err error) error {
	s := ss.s
	var ne net.Error
	switch {
	case errors.Is(err, errOverBudget):
		return ss.overBudget(txn, -1)
	case errors.Is(err, errSpill):
		s.log.Error("cannot spill a large message to disk; refused with 452", "conn", ss.conn.ID, "msgid", txn.ID(), "dir", s.spillDir, "err", err)
		return ss.refuseData(txn, -1, pipeline.ErrSpoolFull)
	case errors.Is(err, smtp.ErrDataTooLarge) || errors.Is(err, pipeline.ErrTooBig):
		return ss.refuseData(txn, -1, pipeline.ErrTooBig)
	case errors.Is(err, smtp.ErrDataReset):
		// The BDAT transfer was abandoned: by RSET (the client goes on
		// with commands), or because reading a chunk failed, which go-smtp
		// answers itself. If that failure was our data deadline, the rest
		// of the chunk is still unread: close rather than parse it as
		// commands.
		if ss.tc.dataDeadlinePassed() {
			ss.tc.expire()
			s.log.Info("data timeout", "conn", ss.conn.ID, "remote_ip", ss.conn.RemoteIP, "msgid", txn.ID())
		} else {
			s.log.Debug("bdat transfer reset", "conn", ss.conn.ID, "msgid", txn.ID())
		}
		return smtpError(err)
	case errors.As(err, &ne) && ne.Timeout():
		// The data deadline passed: make every further read fail so
		// go-smtp closes the connection instead of reading the rest of
		// the data as commands.
		ss.tc.expire()
		s.log.Info("data timeout", "conn", ss.conn.ID, "remote_ip", ss.conn.RemoteIP, "msgid", txn.ID())
		return smtpError(errDataTimeout)
	default:
		// The client hung up or the connection broke: no one reads
		// this reply.
		s.log.Debug("data transfer aborted", "conn", ss.conn.ID, "msgid", txn.ID(), "err", err)
		ss.tc.expire()
		return smtpError(err)
	}
}

// overBudget refuses a message the in-flight budget cannot take: 452
// 4.3.1, after the end of data (go-smtp discards the rest).
func (ss *session) overBudget(txn *relay.Txn, size int) error {
	// The relay logs each refusal; this reason is counted, at most one
	// line a second, so a flood of large messages does not flood the log.
	ss.s.refusals.note(reasonBudget, ss.conn.RemoteIP.String())
	return ss.refuseData(txn, size, errInflightFull)
}

// refuseData answers a message refused as a whole: the relay logs it and
// records the refusal of each recipient.
func (ss *session) refuseData(txn *relay.Txn, size int, err error) error {
	return smtpError(txn.Refuse(ss.ctx, size, err))
}
