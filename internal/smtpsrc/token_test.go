package smtpsrc

import (
	"encoding/base64"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/internal/auth"
	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/relay"
	"github.com/sluice-mta/sluice/internal/revoke"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/internal/token"
	"github.com/sluice-mta/sluice/pipeline"
)

type revoked map[string]bool

func (r revoked) Revoked(c *token.Claims) bool { return r[c.ID] }

// startTokenServer is startAuthServer with tokens verified by v.
func startTokenServer(t *testing.T, l config.SMTPListener, v *token.Verifier, sub *fakeSub) string {
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
	srv.UseTokens(v)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return l.Addr
}

func oauthBearerResp(user, tok string) string {
	return base64.StdEncoding.EncodeToString([]byte("n,a=" + user + ",\x01host=relay.test\x01port=587\x01auth=Bearer " + tok + "\x01\x01"))
}

func xoauth2(user, tok string) string {
	return base64.StdEncoding.EncodeToString([]byte("user=" + user + "\x01auth=Bearer " + tok + "\x01\x01"))
}

func TestAuthTokens(t *testing.T) {
	k := token.GenerateKey()
	iss := token.NewIssuer(k, 0)
	issue := func(o token.IssueOptions) string {
		t.Helper()
		o.Tenant = "acme"
		tok, _, err := iss.Issue(o)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	good := issue(token.IssueOptions{Senders: []string{"acme.example"}, MaxRcpts: 1})
	gone := issue(token.IssueOptions{})
	expired, _, _ := iss.WithClock(func() time.Time { return time.Now().Add(-time.Hour) }).Issue(token.IssueOptions{Tenant: "acme"})
	adminOnly := issue(token.IssueOptions{Scopes: []string{"admin"}})
	rev := revoked{}
	v, err := token.NewVerifier([]*token.PublicKey{k.Public()}, 0, rev)
	if err != nil {
		t.Fatal(err)
	}
	// Revoke gone by its id (the claims are read back by verifying it).
	c, err := v.Verify(gone)
	if err != nil {
		t.Fatal(err)
	}
	rev[c.ID] = true

	l := testListener()
	l.Auth = "required"
	sub := fixedSub()
	addr := startTokenServer(t, l, v, sub)

	c1 := dialReady(t, addr)
	if r := c1.ehlo(); !strings.Contains(strings.Join(r.Lines, "\n"), "AUTH PLAIN LOGIN OAUTHBEARER XOAUTH2") {
		t.Fatalf("mechanisms: %v", r)
	}
	c1.cmd("AUTH OAUTHBEARER "+oauthBearerResp("fn", good), 235)
	if r := c1.cmd("MAIL FROM:<ceo@other.example>", 550); !strings.HasPrefix(r.Text(), "5.7.1 ") {
		t.Fatalf("sender outside the token's domains: %v", r)
	}
	c1.cmd("MAIL FROM:<app@acme.example>", 250)
	c1.cmd("RCPT TO:<bob@local.test>", 250)
	if r := c1.cmd("RCPT TO:<carol@local.test>", 452); !strings.HasPrefix(r.Text(), "4.5.3 ") {
		t.Fatalf("over max_rcpts: %v", r)
	}
	c1.cmd("DATA", 354)
	c1.write("From: app@acme.example\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
	c1.expect(250)
	msgs := sub.messages()
	if len(msgs) != 1 || msgs[0].Conn.Identity == nil || msgs[0].Conn.Identity.Method != "token" || msgs[0].Conn.Identity.Tenant != "acme" || len(msgs[0].Rcpts) != 1 {
		t.Fatalf("messages %+v", msgs)
	}

	// XOAUTH2 with a good token, as an initial response and after 334.
	c2 := dialReady(t, addr)
	c2.ehlo()
	c2.cmd("AUTH XOAUTH2 "+xoauth2("fn", good), 235)
	c3 := dialReady(t, addr)
	c3.ehlo()
	c3.cmd("AUTH XOAUTH2", 334)
	c3.cmd(xoauth2("fn", good), 235)

	// Refusals: 535 5.7.8 each; the third on a connection gets 421.
	c4 := dialReady(t, addr)
	c4.ehlo()
	if r := c4.cmd("AUTH XOAUTH2 "+xoauth2("fn", gone), 535); !strings.HasPrefix(r.Text(), "5.7.8 ") {
		t.Fatalf("revoked token over XOAUTH2: %v", r)
	}
	// OAUTHBEARER: an RFC 7628 error challenge, the client's ^A, then 535.
	r := c4.cmd("AUTH OAUTHBEARER "+oauthBearerResp("fn", gone), 334)
	if js, _ := base64.StdEncoding.DecodeString(r.Text()); !strings.Contains(string(js), `"invalid_token"`) {
		t.Fatalf("OAUTHBEARER error challenge %q", js)
	}
	c4.cmd(base64.StdEncoding.EncodeToString([]byte{1}), 535)
	c4.cmd("AUTH XOAUTH2 "+xoauth2("fn", expired), 421)
	c4.expectClosed()

	c5 := dialReady(t, addr)
	c5.ehlo()
	c5.cmd("AUTH XOAUTH2 "+xoauth2("fn", adminOnly), 535)
	c5.cmd("AUTH XOAUTH2 "+xoauth2("fn", good[:len(good)-60]+strings.Repeat("A", 60)), 535)
	c5.cmd("AUTH XOAUTH2 "+base64.StdEncoding.EncodeToString([]byte("user=fn\x01\x01")), 501)
}

func TestAuthTokensNotOffered(t *testing.T) {
	l := testListener()
	l.Auth = "optional"
	addr := startAuthServer(t, l, "", fixedSub())
	c := dialReady(t, addr)
	if r := c.ehlo(); strings.Contains(strings.Join(r.Lines, "\n"), "OAUTHBEARER") {
		t.Fatalf("OAUTHBEARER offered without tokens: %v", r)
	}
	c.cmd("AUTH XOAUTH2 "+xoauth2("fn", "v4.public.x"), 504)
}

// A session authenticated by a token does not outlive it: a revocation
// (the node's real revocation list) or the token's expiry during the
// session refuses the next MAIL with 530 5.7.0 saying why.
func TestTokenCheckedAtMail(t *testing.T) {
	k := token.GenerateKey()
	iss := token.NewIssuer(k, 0)
	tok, c, err := iss.Issue(token.IssueOptions{Tenant: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	// Valid for about 2 s more (plus the 5 s of clock skew tolerated).
	short, _, err := iss.WithClock(func() time.Time { return time.Now().Add(-token.DefaultLifetime + 2*time.Second) }).
		Issue(token.IssueOptions{Tenant: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	list, err := revoke.New(revoke.Options{})
	if err != nil {
		t.Fatal(err)
	}
	v, err := token.NewVerifier([]*token.PublicKey{k.Public()}, 0, list)
	if err != nil {
		t.Fatal(err)
	}
	l := testListener()
	l.Auth = "required"
	addr := startTokenServer(t, l, v, fixedSub())

	s := dialReady(t, addr)
	s.ehlo()
	s.cmd("AUTH OAUTHBEARER "+oauthBearerResp("fn", tok), 235)
	s.cmd("MAIL FROM:<app@acme.example>", 250)
	s.cmd("RSET", 250)
	if _, err := list.RevokeID(t.Context(), "acme", c.ID, revoke.SourceAPI); err != nil {
		t.Fatal(err)
	}
	if r := s.cmd("MAIL FROM:<app@acme.example>", 530); !strings.HasPrefix(r.Text(), "5.7.0 ") || !strings.Contains(r.Text(), "was revoked") {
		t.Fatalf("MAIL after the revocation: %v", r)
	}
	// A new session with the revoked token is refused at AUTH, saying so.
	s2 := dialReady(t, addr)
	s2.ehlo()
	if r := s2.cmd("AUTH XOAUTH2 "+xoauth2("fn", tok), 535); !strings.HasPrefix(r.Text(), "5.7.8 ") || !strings.Contains(r.Text(), "revoked") {
		t.Fatalf("AUTH with the revoked token: %v", r)
	}

	// Expiry during the session.
	s3 := dialReady(t, addr)
	s3.ehlo()
	s3.cmd("AUTH XOAUTH2 "+xoauth2("fn", short), 235)
	var last reply
	testutil.WaitFor(t, "MAIL refused once the token expired", func() bool {
		s3.write("MAIL FROM:<app@acme.example>\r\n")
		var err error
		if last, err = s3.read(); err != nil {
			t.Fatal(err)
		}
		if last.Code == 250 {
			s3.cmd("RSET", 250)
			time.Sleep(200 * time.Millisecond)
			return false
		}
		return true
	})
	if last.Code != 530 || !strings.HasPrefix(last.Text(), "5.7.0 ") || !strings.Contains(last.Text(), "expired at") {
		t.Fatalf("MAIL after the expiry: %v", last)
	}
}

// A token naming many sender domains is several kilobytes once in an
// OAUTHBEARER or XOAUTH2 response, past the 1000-octet command line: it
// is accepted as an initial response and after 334 (AUTH lines may be up
// to 12288 octets), and a response past that gets 500 5.5.6 rather than
// no reply.
func TestAuthLongToken(t *testing.T) {
	k := token.GenerateKey()
	senders := make([]string, 40)
	for i := range senders {
		senders[i] = "d" + strings.Repeat("x", 30) + string(rune('a'+i%26)) + string(rune('a'+i/26)) + ".example"
	}
	long, _, err := token.NewIssuer(k, 0).Issue(token.IssueOptions{Tenant: "acme", Senders: senders})
	if err != nil {
		t.Fatal(err)
	}
	if n := len("AUTH OAUTHBEARER " + oauthBearerResp("fn", long)); n < 2000 || n > 12000 {
		t.Fatalf("the AUTH line is %d octets; the test wants 2000 to 12000", n)
	}
	v, err := token.NewVerifier([]*token.PublicKey{k.Public()}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	l := testListener()
	l.Auth = "required"
	addr := startTokenServer(t, l, v, fixedSub())

	c1 := dialReady(t, addr)
	c1.ehlo()
	c1.cmd("AUTH OAUTHBEARER "+oauthBearerResp("fn", long), 235)
	c1.cmd("MAIL FROM:<app@"+senders[39]+">", 250)

	c2 := dialReady(t, addr)
	c2.ehlo()
	c2.cmd("AUTH XOAUTH2", 334)
	c2.cmd(xoauth2("fn", long), 235)

	c3 := dialReady(t, addr)
	c3.ehlo()
	c3.cmd("AUTH XOAUTH2", 334)
	if r := c3.cmd(strings.Repeat("A", 13000), 500); !strings.HasPrefix(r.Text(), "5.5.6 ") {
		t.Fatalf("an over-long AUTH response: %v", r)
	}
	c3.cmd("NOOP", 250)
}
