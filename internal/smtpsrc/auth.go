package smtpsrc

import (
	"errors"
	"net/netip"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/internal/relay"
	"github.com/sluice-mta/sluice/internal/token"
	"github.com/sluice-mta/sluice/pipeline"
)

// SMTP AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN
// (draft-murchison-sasl-login), plus OAUTHBEARER (RFC 7628) and XOAUTH2
// carrying Sluice's short-lived tokens when sluice.tokens is configured
// (UseTokens), on listeners with auth = "optional" or
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
	if ss.s.tokens.Load() != nil {
		return []string{sasl.Plain, sasl.Login, sasl.OAuthBearer, mechXOAuth2}
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
	case sasl.OAuthBearer, mechXOAuth2:
		if ss.s.tokens.Load() == nil {
			break
		}
		if mech == mechXOAuth2 {
			return &xoauth2Server{check: func(user, tok string) error { return ss.tokenLogin(mech, user, tok) }}, nil
		}
		ob := &oauthBearer{}
		ob.Server = sasl.NewOAuthBearerServer(func(o sasl.OAuthBearerOptions) *sasl.OAuthBearerError {
			if ob.err = ss.tokenLogin(mech, o.Username, o.Token); ob.err != nil {
				return &sasl.OAuthBearerError{Status: "invalid_token", Schemes: "bearer"}
			}
			return nil
		})
		return ob, nil
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

// ---- tokens: OAUTHBEARER (RFC 7628) and XOAUTH2 ----

// mechXOAuth2 is Google's XOAUTH2 mechanism
// (https://developers.google.com/gmail/imap/xoauth2-protocol).
const mechXOAuth2 = "XOAUTH2"

var (
	errTokenRefused = &pipeline.Error{Code: 535, Enhanced: pipeline.EnhancedCode{5, 7, 8},
		Message: "Authentication credentials invalid: the token is expired, not yet valid, signed by an unknown key or malformed; mint a new one"}
	errTokenRevoked = &pipeline.Error{Code: 535, Enhanced: pipeline.EnhancedCode{5, 7, 8},
		Message: "Authentication credentials invalid: the token was revoked"}
	errTokenScope = &pipeline.Error{Code: 535, Enhanced: pipeline.EnhancedCode{5, 7, 8},
		Message: "Authentication credentials invalid: the token lacks the send scope"}
	// errTokenRcptCap: RFC 5321 section 4.5.3.1.10 (too many recipients).
	errTokenRcptCap = &pipeline.Error{Code: 452, Enhanced: pipeline.EnhancedCode{4, 5, 3},
		Message: "Too many recipients for this token (max_rcpts)"}
)

// UseTokens offers AUTH OAUTHBEARER and XOAUTH2 (with PLAIN and LOGIN,
// under the same rules) and accepts Sluice's short-lived tokens through
// them; v nil offers neither. Safe to call at any time.
func (s *Server) UseTokens(v *token.Verifier) { s.tokens.Store(v) }

// tokenLogin verifies a token presented by OAUTHBEARER or XOAUTH2: the
// token's identity (method "token") goes through on_auth (a stage may
// refuse or replace it) and stays on the connection; its max_rcpts caps
// the recipients of each transaction (452 4.5.3). The user name the
// client sends is only logged. A refused token counts as a failed attempt
// and is logged with the reason.
func (ss *session) tokenLogin(mech, user, tok string) error {
	v := ss.s.tokens.Load()
	if v == nil {
		return ss.authFailed(errTokenRefused)
	}
	c, err := v.Verify(tok)
	if err != nil {
		ss.s.relay.AuthFailed(ss.conn, mech, user, err.Error())
		if errors.Is(err, token.ErrRevoked) {
			return ss.authFailed(errTokenRevoked)
		}
		return ss.authFailed(errTokenRefused)
	}
	if !c.HasScope(token.ScopeSend) {
		ss.s.relay.AuthFailed(ss.conn, mech, user, "token lacks the send scope")
		return ss.authFailed(errTokenScope)
	}
	id := &pipeline.Identity{Name: "tok_" + c.ID, Tenant: c.Tenant, Method: "token",
		Scopes: c.Scopes, Senders: c.Senders}
	cr := &pipeline.Credentials{Mechanism: mech, Username: user, Token: tok}
	nid, err := ss.tc.rs.Verified(ss.ctx, cr, id)
	if err != nil {
		if relay.IsAuthFailure(err) {
			return ss.authFailed(err)
		}
		return smtpError(err)
	}
	ss.conn.Identity = nid
	ss.rcptCap = c.MaxRcpts
	ss.token = c
	ss.s.log.Info("authenticated", "source", ss.conn.Source, "conn", ss.conn.ID, "remote_ip", ss.conn.RemoteIP.String(),
		"user", user, "mechanism", mech, "identity", nid.Name, "tenant", nid.Tenant, "method", nid.Method, "kid", c.KeyID)
	return nil
}

// oauthBearer is go-sasl's OAUTHBEARER server, whose failure (after the
// RFC 7628 error challenge and the client's dummy response) is replaced
// by the SMTP reply tokenLogin chose (535 5.7.8, or 421 on the last
// attempt).
type oauthBearer struct {
	sasl.Server
	err error
}

func (o *oauthBearer) Next(resp []byte) ([]byte, bool, error) {
	ch, done, err := o.Server.Next(resp)
	if err != nil && o.err != nil {
		err = o.err
	}
	return ch, done, err
}

// xoauth2Server is the server side of XOAUTH2: one client response,
// "user=" USER ^A "auth=Bearer " TOKEN ^A ^A. A refusal is answered
// directly (535), without Google's JSON challenge round trip.
type xoauth2Server struct {
	check func(user, tok string) error
	done  bool
}

var errXOAuth2Syntax = &pipeline.Error{Code: 501, Enhanced: pipeline.EnhancedCode{5, 5, 2},
	Message: "Malformed XOAUTH2 response: want user=USER^Aauth=Bearer TOKEN^A^A"}

func (a *xoauth2Server) Next(resp []byte) ([]byte, bool, error) {
	if a.done {
		return nil, true, smtpError(errXOAuth2Syntax)
	}
	if resp == nil {
		return []byte{}, false, nil // no initial response: ask for it
	}
	a.done = true
	var user, tok string
	for _, f := range strings.Split(string(resp), "\x01") {
		switch {
		case strings.HasPrefix(f, "user="):
			user = f[len("user="):]
		case len(f) > len("auth=Bearer ") && strings.EqualFold(f[:len("auth=Bearer ")], "auth=Bearer "):
			tok = f[len("auth=Bearer "):]
		}
	}
	if tok == "" {
		return nil, true, smtpError(errXOAuth2Syntax)
	}
	return nil, true, a.check(user, tok)
}

// checkToken runs at every MAIL of a session that authenticated with a
// token: the session must not outlive the token, so its expiry and
// revocation are checked again (token.Verifier.Check: a clock read and
// two map lookups). A refusal is 530 5.7.0 (RFC 4954 section 6,
// authentication required) saying why; AUTH cannot be repeated on the
// connection, so the client reconnects with a new token.
func (ss *session) checkToken() error {
	c := ss.token
	if c == nil {
		return nil
	}
	v := ss.s.tokens.Load()
	var err error
	if v == nil {
		err = errors.New("tokens are no longer accepted (sluice.tokens removed)")
	} else {
		err = v.Check(c)
	}
	if err == nil {
		return nil
	}
	why := "is no longer accepted by this server"
	switch {
	case errors.Is(err, token.ErrExpired):
		why = "expired at " + c.Expires.UTC().Format(time.RFC3339)
	case errors.Is(err, token.ErrRevoked):
		why = "was revoked"
	}
	ss.s.log.Info("token session refused at MAIL", "conn", ss.conn.ID, "remote_ip", ss.conn.RemoteIP.String(),
		"tenant", c.Tenant, "jti", c.ID, "err", err)
	return smtpError(&pipeline.Error{Code: 530, Enhanced: pipeline.EnhancedCode{5, 7, 0},
		Message: "Authentication required: the token this session authenticated with " + why + "; reconnect and authenticate with a new token"})
}
