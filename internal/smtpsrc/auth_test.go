package smtpsrc

import (
	"context"
	"encoding/base64"
	"errors"
	"net"
	netsmtp "net/smtp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/auth"
	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/relay"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// fakeUsers is a relay.Verifier with plain-text passwords.
type fakeUsers map[string]struct {
	pass string
	id   pipeline.Identity
}

func (f fakeUsers) Verify(_ context.Context, user, pass string) (*pipeline.Identity, error) {
	u, ok := f[user]
	if !ok {
		return nil, auth.ErrUnknownUser
	}
	if u.pass != pass {
		return nil, auth.ErrBadPassword
	}
	id := u.id
	return &id, nil
}

var testUsers = fakeUsers{
	"alice": {"alice-pw", pipeline.Identity{Name: "alice", Tenant: "acme", Method: "smtp-auth", Scopes: []string{"send"}, Senders: []string{"acme.example"}}},
}

// remoteListener makes its connections look as if they came from addr
// (a non-loopback client over the loopback socket).
type remoteListener struct {
	net.Listener
	addr net.Addr
}

func (l remoteListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return remoteConn{c, l.addr}, nil
}

type remoteConn struct {
	net.Conn
	addr net.Addr
}

func (c remoteConn) RemoteAddr() net.Addr { return c.addr }

// startAuthServer serves l with a relay that knows testUsers; remote, when
// set, is the client address every connection appears to come from.
func startAuthServer(t *testing.T, l config.SMTPListener, remote string, sub *fakeSub) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.Addr = ln.Addr().String()
	rl := relay.New(relay.NewPipeline(newChain(t, pipeline.ChainOptions{}), nil), sub, relay.Options{Logger: testLogger(), Hostname: "relay.test",
		Users: testUsers, Guard: auth.NewGuard(auth.GuardOptions{Free: 100})})
	srv, err := New(l, rl, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	srv.recoverPanics = false
	var sln net.Listener = ln
	if remote != "" {
		sln = remoteListener{ln, &net.TCPAddr{IP: net.ParseIP(remote), Port: 40000}}
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return l.Addr
}

func plain(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
}

func offersAuth(r reply) bool {
	return slices.ContainsFunc(r.Lines, func(l string) bool { return strings.HasPrefix(l, "AUTH ") })
}

// Before STARTTLS, a non-loopback client is not offered AUTH and gets
// 538 5.7.11 if it tries (RFC 4954 section 6); auth_insecure lifts that.
func TestAuthRefusedBeforeTLSOffLoopback(t *testing.T) {
	l := testListener()
	l.Auth = "optional"
	addr := startAuthServer(t, l, "192.0.2.10", fixedSub())
	c := dialReady(t, addr)
	if r := c.ehlo(); offersAuth(r) {
		t.Fatalf("AUTH offered in clear text to a remote client: %v", r)
	}
	if r := c.cmd("AUTH PLAIN "+plain("alice", "alice-pw"), 538); !strings.HasPrefix(r.Text(), "5.7.11 ") {
		t.Fatalf("reply %v, want 538 5.7.11", r)
	}

	l.AuthInsecure = true
	addr = startAuthServer(t, l, "192.0.2.10", fixedSub())
	c = dialReady(t, addr)
	if r := c.ehlo(); !offersAuth(r) || !strings.Contains(strings.Join(r.Lines, " "), "AUTH PLAIN LOGIN") {
		t.Fatalf("AUTH not offered with auth_insecure: %v", r)
	}
	c.cmd("AUTH PLAIN "+plain("alice", "alice-pw"), 235)
}

// On loopback: good and bad passwords, unknown users, LOGIN, 530 on a
// required listener, 421 and a close at the third failure.
func TestAuthLoopback(t *testing.T) {
	l := testListener()
	l.Auth = "required"
	sub := fixedSub()
	addr := startAuthServer(t, l, "", sub)

	c := dialReady(t, addr)
	if r := c.ehlo(); !offersAuth(r) {
		t.Fatalf("AUTH not offered on loopback: %v", r)
	}
	if r := c.cmd("MAIL FROM:<a@acme.example>", 530); !strings.HasPrefix(r.Text(), "5.7.0 ") {
		t.Fatalf("MAIL before AUTH: %v", r)
	}
	c.cmd("AUTH PLAIN "+plain("alice", "wrong"), 535)
	c.cmd("AUTH PLAIN "+plain("nobody", "alice-pw"), 535)
	c.cmd("AUTH PLAIN "+plain("alice", "wrong-again"), 421)
	c.expectClosed()

	// LOGIN, then a message within the identity's senders.
	c = dialReady(t, addr)
	c.ehlo()
	c.cmd("AUTH LOGIN", 334)
	c.cmd(base64.StdEncoding.EncodeToString([]byte("alice")), 334)
	c.cmd(base64.StdEncoding.EncodeToString([]byte("alice-pw")), 235)
	c.cmd("AUTH PLAIN "+plain("alice", "alice-pw"), 503) // once per session
	// A sender outside the identity's domains: 550 5.7.1, recorded.
	if r := c.cmd("MAIL FROM:<ceo@other.example>", 550); !strings.HasPrefix(r.Text(), "5.7.1 ") {
		t.Fatalf("foreign sender: %v", r)
	}
	if r := c.sendMessage("news@acme.example", []string{"bob@local.test"}, "From: news@acme.example\r\nSubject: x\r\n\r\nhi\r\n"); r.Code != 250 {
		t.Fatalf("allowed sender: %v", r)
	}
	// A From header outside the senders, two From fields, two mailboxes.
	for _, hdr := range []string{
		"From: ceo@other.example\r\n",
		"From: news@acme.example\r\nFrom: ceo@other.example\r\n",
		"From: news@acme.example, ceo@other.example\r\n",
	} {
		if r := c.sendMessage("news@acme.example", []string{"bob@local.test"}, hdr+"Subject: x\r\n\r\nhi\r\n"); r.Code != 550 || !strings.HasPrefix(r.Text(), "5.7.1 ") {
			t.Fatalf("%q: %v", hdr, r)
		}
	}
	msgs := sub.messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages accepted, want 1", len(msgs))
	}
	if rej := sub.rejections(); len(rej) != 4 {
		t.Fatalf("%d rejections recorded, want 4: %+v", len(rej), rej)
	}
}

// The relay's Guard locks an address out across connections: each
// attempt is then 454 4.7.0 without a password check.
func TestAuthGuardAcrossConnections(t *testing.T) {
	l := testListener()
	l.Auth = "optional"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.Addr = ln.Addr().String()
	g := auth.NewGuard(auth.GuardOptions{Free: 2, Base: time.Hour})
	rl := relay.New(relay.NewPipeline(newChain(t, pipeline.ChainOptions{}), nil), fixedSub(), relay.Options{Logger: testLogger(), Users: testUsers, Guard: g})
	srv, err := New(l, rl, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	for i := 0; i < 2; i++ {
		c := dialReady(t, l.Addr)
		c.ehlo()
		c.cmd("AUTH PLAIN "+plain("alice", "bad"), 535)
		c.cmd("QUIT", 221)
	}
	c := dialReady(t, l.Addr)
	c.ehlo()
	c.cmd("AUTH PLAIN "+plain("alice", "bad"), 535) // the third failure starts the lockout
	r := c.cmd("AUTH PLAIN "+plain("alice", "alice-pw"), 454)
	if !strings.HasPrefix(r.Text(), "4.7.0 ") {
		t.Fatalf("locked out: %v", r)
	}
}

// After STARTTLS a remote client is offered AUTH and may use it; its
// identity then sets the tenant.
func TestAuthAfterSTARTTLSRemote(t *testing.T) {
	crt := testutil.SelfSignedCert(t, "mx.sluice.test", "127.0.0.1")
	l := testListener()
	l.Auth = "required"
	l.TLS = &config.TLS{Cert: crt.CertFile, Key: crt.KeyFile}
	sub := fixedSub()
	addr := startAuthServer(t, l, "192.0.2.10", sub)
	c, err := netsmtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("AUTH"); ok {
		t.Fatal("AUTH offered before STARTTLS to a remote client")
	}
	if err := c.StartTLS(crt.ClientTLS("mx.sluice.test")); err != nil {
		t.Fatal(err)
	}
	if ok, mechs := c.Extension("AUTH"); !ok || mechs != "PLAIN LOGIN" {
		t.Fatalf("AUTH after STARTTLS: %v %q", ok, mechs)
	}
	if err := c.Auth(netsmtp.PlainAuth("", "alice", "alice-pw", "127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("a@acme.example"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("bob@local.test"); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("From: a@acme.example\r\nSubject: tls\r\n\r\nhi\r\n"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	c.Quit()
	m := sub.messages()
	if len(m) != 1 || m[0].Conn.Identity == nil || m[0].Conn.Identity.Tenant != "acme" || m[0].Conn.TLS == "" {
		t.Fatalf("messages %+v", m)
	}
}
