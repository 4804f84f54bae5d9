package smtpsrc

import (
	"errors"
	"net/netip"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/internal/relay"
	"github.com/sluice-mta/sluice/pipeline"
)

// SMTP AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN
// (draft-murchison-sasl-login), on listeners with auth = "optional" or
// "required". The relay verifies the credentials (Session.Login: the
// users file, then on_auth) and keeps the identity on the connection.
//
// AUTH is offered (in the EHLO reply) only over TLS or to a loopback
// client, unless the listener sets auth_insecure = true: elsewhere,
// before STARTTLS, AUTH gets 538 5.7.11 (RFC 4954 section 6).
//
// The third failed attempt on a connection gets 421 4.7.0 and the
// connection is closed; the relay's Guard limits failures per client
// address and per user across connections.

// maxAuthFailures is how many failed AUTH attempts a connection may make;
// the last one is answered 421 and the connection closed.
const maxAuthFailures = 3

var (
	errEncryptionRequired = &pipeline.Error{Code: 538, Enhanced: pipeline.EnhancedCode{5, 7, 11},
		Message: "Encryption required for requested authentication mechanism: use STARTTLS first"}
	errAuthRequired = &pipeline.Error{Code: 530, Enhanced: pipeline.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	errTooManyAuth  = &pipeline.Error{Code: 421, Enhanced: pipeline.EnhancedCode{4, 7, 0},
		Message: "Too many failed authentication attempts, closing connection"}
	errAuthzID = &pipeline.Error{Code: 535, Enhanced: pipeline.EnhancedCode{5, 7, 8},
		Message: "Authentication credentials invalid: an authorization identity other than the user name is not supported"}
)

var _ smtp.AuthSession = (*session)(nil)

// authEnabled: the listener accepts AUTH at all.
func (s *Server) authEnabled() bool { return s.l.Auth == "optional" || s.l.Auth == "required" }

// authOffered is the rule for offering AUTH on a connection: over TLS,
// from a loopback address, or anywhere with auth_insecure.
func authOffered(tls bool, ip netip.Addr, insecure bool) bool {
	return tls || insecure || ip.IsLoopback()
}

func (ss *session) authOffered() bool {
	_, tls := ss.sc.TLSConnectionState()
	return authOffered(tls, ss.conn.RemoteIP, ss.s.l.AuthInsecure)
}

// AuthMechanisms lists the mechanisms offered in the EHLO reply: none
// when AUTH is off or may not be used on this connection yet.
func (ss *session) AuthMechanisms() []string {
	if !ss.s.authEnabled() || !ss.authOffered() {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

// Auth starts a SASL exchange for mech.
func (ss *session) Auth(mech string) (sasl.Server, error) {
	if !ss.s.authEnabled() {
		return nil, smtp.ErrAuthUnsupported
	}
	if !ss.authOffered() {
		return nil, smtpError(errEncryptionRequired)
	}
	if ss.s.draining.Load() {
		return nil, smtpError(errShuttingDown)
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(authz, user, pass string) error {
			if authz != "" && authz != user {
				return ss.authFailed(errAuthzID)
			}
			return ss.login(mech, user, pass)
		}), nil
	case sasl.Login:
		return &loginServer{check: func(user, pass string) error { return ss.login(mech, user, pass) }}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// login verifies the credentials through the relay session.
func (ss *session) login(mech, user, pass string) error {
	cr := &pipeline.Credentials{Mechanism: mech, Username: user, Password: pass}
	if _, err := ss.tc.rs.Login(ss.ctx, cr); err != nil {
		if relay.IsAuthFailure(err) {
			return ss.authFailed(err)
		}
		return smtpError(err)
	}
	return nil
}

// authFailed counts a failed attempt on the connection: the last allowed
// one is answered 421 and the connection closed.
func (ss *session) authFailed(err error) error {
	ss.tc.authFails++
	if ss.tc.authFails >= maxAuthFailures {
		return smtpError(errTooManyAuth) // go-smtp closes after a 421 (our patch)
	}
	return smtpError(err)
}

// checkAuthRequired refuses MAIL before AUTH on an auth = "required"
// listener (530 5.7.0, RFC 4954 section 6).
func (ss *session) checkAuthRequired() error {
	if ss.s.l.Auth == "required" && ss.conn.Identity == nil {
		return smtpError(errAuthRequired)
	}
	return nil
}

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login-00): the "Username:" and "Password:"
// challenges, each answered with base64 text. go-sasl no longer ships a
// LOGIN server (the mechanism is obsolete), but most mail clients and
// appliances still use it.
type loginServer struct {
	check func(user, pass string) error
	state int
	user  string
}

var errLoginSyntax = errors.New("unexpected LOGIN response")

func (a *loginServer) Next(resp []byte) (challenge []byte, done bool, err error) {
	switch a.state {
	case 0:
		a.state = 1
		if len(resp) > 0 { // initial response: the user name
			a.user = string(resp)
			a.state = 2
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 1:
		a.user = string(resp)
		a.state = 2
		return []byte("Password:"), false, nil
	case 2:
		a.state = 3
		return nil, true, a.check(a.user, string(resp))
	}
	return nil, true, errLoginSyntax
}
