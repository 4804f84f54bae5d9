package relay

import (
	"context"
	"errors"
	"fmt"
	gomail "net/mail"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/internal/auth"
	"github.com/sluice-mta/sluice/pipeline"
)

// Sender authorization: one rule for every source (SMTP AUTH users, HTTP
// API keys, and later tokens). An identity whose Senders list is not
// empty may use only those domains ("example.com": any address at
// exactly that domain) and addresses ("alerts@example.com"), on the
// envelope sender (checked at MAIL, Session.BeginWith) and on the From
// header field (checked before on_message, Txn.Prepare), which must then
// be exactly one field with exactly one mailbox (RFC 5322 section
// 3.6.2). A session without an identity (an MX client, a relay_networks
// client) is not restricted; neither is an identity with no Senders. The
// null sender (<>) is allowed: it names no domain.
//
// Violations are 550 5.7.1 (RFC 3463: delivery not authorized) wrapped in
// a *SenderError naming the field, so HTTP can answer 403 with it.

// Fields a SenderError names.
const (
	FieldEnvelope = "envelope" // MAIL FROM / the request's "from"
	FieldFrom     = "from"     // the From header field
)

// SenderError is a sender authorization refusal.
type SenderError struct {
	Field   string // FieldEnvelope or FieldFrom
	Address string // the refused address ("" when the From field is malformed)
	Err     *pipeline.Error
}

func (e *SenderError) Error() string { return e.Err.Error() }
func (e *SenderError) Unwrap() error { return e.Err }

func senderRefused(field, addr, msg string) *SenderError {
	return &SenderError{Field: field, Address: addr,
		Err: &pipeline.Error{Code: 550, Enhanced: pipeline.EnhancedCode{5, 7, 1}, Message: msg}}
}

// SenderAllowed reports whether id may use addr (an RFC 5321 or RFC 5322
// address, local@domain) as a sender.
func SenderAllowed(id *pipeline.Identity, addr string) bool {
	if id == nil || len(id.Senders) == 0 {
		return true
	}
	local, domain, err := pipeline.SplitAddress(addr)
	if err != nil {
		return false
	}
	full := local + "@" + domain
	for _, s := range id.Senders {
		if strings.IndexByte(s, '@') >= 0 {
			if strings.EqualFold(s, full) {
				return true
			}
		} else if strings.EqualFold(s, domain) {
			return true
		}
	}
	return false
}

// CheckEnvelopeSender applies the rule to the envelope sender ("" is the
// null sender).
func CheckEnvelopeSender(id *pipeline.Identity, sender string) error {
	if sender == "" || SenderAllowed(id, sender) {
		return nil
	}
	return senderRefused(FieldEnvelope, sender, fmt.Sprintf("%s may not send from %s", id.Name, sender))
}

// CheckFromHeader applies the rule to the values of the From header
// fields of a message.
func CheckFromHeader(id *pipeline.Identity, values []string) error {
	if id == nil || len(id.Senders) == 0 {
		return nil
	}
	if len(values) != 1 {
		return senderRefused(FieldFrom, "", fmt.Sprintf("the message must have exactly one From header field (it has %d)", len(values)))
	}
	list, err := gomail.ParseAddressList(values[0])
	if err != nil || len(list) != 1 {
		return senderRefused(FieldFrom, "", "the From header field must hold exactly one mailbox")
	}
	if a := list[0].Address; !SenderAllowed(id, a) {
		return senderRefused(FieldFrom, a, fmt.Sprintf("%s may not send with From: %s", id.Name, a))
	}
	return nil
}

// Verifier checks user names and passwords against a built-in store (the
// users file, *auth.Users).
type Verifier interface {
	// Verify returns the user's identity, or auth.ErrUnknownUser (other
	// back ends get a chance: on_auth) or auth.ErrBadPassword.
	Verify(ctx context.Context, user, password string) (*pipeline.Identity, error)
}

var (
	errAuthFailed    = &pipeline.Error{Code: 535, Enhanced: pipeline.EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}
	errAuthLocked    = &pipeline.Error{Code: 454, Enhanced: pipeline.EnhancedCode{4, 7, 0}, Message: "Temporary authentication failure: too many failed attempts, try again later"}
	errAuthUnchecked = &pipeline.Error{Code: 454, Enhanced: pipeline.EnhancedCode{4, 7, 0}, Message: "Temporary authentication failure"}
)

// IsAuthFailure reports whether err (from Login) counts as a failed
// attempt: wrong credentials or a lockout, not a server-side failure.
func IsAuthFailure(err error) bool {
	var pe *pipeline.Error
	if !errors.As(err, &pe) {
		return false
	}
	return pe.Code == 535 || pe == errAuthLocked
}

// Login authenticates a user name and password (SMTP AUTH PLAIN/LOGIN)
// for the session: a client address or user locked out by the relay's
// Guard gets 454 4.7.0 without any check; a user of the users file
// (Options.Users) is verified there and its identity passes on_auth
// (Verified: a stage may refuse or replace it); a user the file does not
// know (or every user, without a file) goes to on_auth (Auth: Lua or
// plugin back ends). A wrong password is 535 5.7.8 and on_auth does not
// run. Each failure is counted by the Guard and logged with the client
// address (at most one line per address and 10 s, with a count of the
// lines held back). On success conn.Identity is the identity.
func (s *Session) Login(ctx context.Context, cr *pipeline.Credentials) (*pipeline.Identity, error) {
	r := s.r
	ip := s.Conn.RemoteIP
	if r.guard != nil {
		if d := r.guard.Locked(ip, cr.Username); d > 0 {
			r.authFailed(s.Conn, cr, "locked out", d)
			return nil, errAuthLocked
		}
	}
	var (
		id  *pipeline.Identity
		err error
	)
	if r.users != nil {
		id, err = r.users.Verify(ctx, cr.Username, cr.Password)
		switch {
		case err == nil:
			id, err = s.Verified(ctx, cr, id)
			if err == nil {
				s.Conn.Identity = id
			}
		case errors.Is(err, auth.ErrUnknownUser):
			id, err = s.auth(ctx, cr)
		case errors.Is(err, auth.ErrBadPassword):
			err = errAuthFailed
		default: // ctx ended while waiting for a turn
			return nil, errAuthUnchecked
		}
	} else {
		id, err = s.auth(ctx, cr)
	}
	if err != nil {
		if IsAuthFailure(err) && r.guard != nil {
			d := r.guard.Fail(ip, cr.Username)
			r.authFailed(s.Conn, cr, "invalid credentials", d)
		} else {
			r.authFailed(s.Conn, cr, "refused", 0)
		}
		return nil, err
	}
	if r.guard != nil {
		r.guard.Succeed(cr.Username)
	}
	r.log.Info("authenticated", "source", s.Conn.Source, "conn", s.Conn.ID, "remote_ip", ip.String(),
		"user", cr.Username, "mechanism", cr.Mechanism, "identity", id.Name, "tenant", id.Tenant, "method", id.Method)
	return id, nil
}

// auth is Auth without its refusal log line (Login logs failures itself).
func (s *Session) auth(ctx context.Context, cr *pipeline.Credentials) (*pipeline.Identity, error) {
	p := s.r.acquire()
	defer p.release()
	id, err := p.Chain.Auth(ctx, s.Conn, cr)
	if err != nil {
		return nil, err
	}
	s.Conn.Identity = id
	return id, nil
}

// authFailed logs a failed authentication, at most one line per client
// address per 10 s (similar_suppressed counts the others).
func (r *Relay) authFailed(c *pipeline.Conn, cr *pipeline.Credentials, reason string, lockout time.Duration) {
	ok, n := r.authSample.Allow(c.RemoteIP.String())
	if !ok {
		return
	}
	attrs := []any{"source", c.Source, "conn", c.ID, "remote_ip", c.RemoteIP.String(), "user", cr.Username,
		"mechanism", cr.Mechanism, "reason", reason, "similar_suppressed", n}
	if c.Listener != "" {
		attrs = append(attrs, "listener", c.Listener)
	}
	if lockout > 0 {
		attrs = append(attrs, "locked_for", lockout.String())
	}
	r.log.Warn("authentication failed", attrs...)
}

// AuthFailed logs a failed authentication the source checked itself (an
// HTTP request with a missing or unknown API key), rate-limited like the
// relay's own: at most one line per client address per 10 s.
func (r *Relay) AuthFailed(c *pipeline.Conn, mechanism, user, reason string) {
	r.authFailed(c, &pipeline.Credentials{Mechanism: mechanism, Username: user}, reason, 0)
}
