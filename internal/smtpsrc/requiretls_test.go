package smtpsrc

import (
	"crypto/tls"
	"slices"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// TestREQUIRETLSInbound: REQUIRETLS (RFC 8689) is offered only on a TLS
// session, refused in clear text with 530 5.7.10, and recorded on the
// message when given over TLS; a listener with requiretls = false neither
// offers nor accepts it.
func TestREQUIRETLSInbound(t *testing.T) {
	crt := testutil.SelfSignedCert(t, "mx.sluice.test", "127.0.0.1")
	offers := func(r reply) bool {
		return slices.ContainsFunc(r.Lines, func(l string) bool { return strings.EqualFold(l, "REQUIRETLS") })
	}
	// startTLS upgrades c and says EHLO again.
	startTLS := func(t *testing.T, c *client) (*client, reply) {
		t.Helper()
		c.cmd("STARTTLS", 220)
		tc := tls.Client(c.conn, crt.ClientTLS("mx.sluice.test"))
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		c = newClient(t, tc)
		return c, c.ehlo()
	}
	start := func(t *testing.T, disable bool) (*testServer, *fakeSub) {
		l := testListener()
		l.TLS = &config.TLS{Cert: crt.CertFile, Key: crt.KeyFile}
		l.DisableRequireTLS = disable
		sub := &fakeSub{}
		return startServer(t, l, newChain(t, pipeline.ChainOptions{}), sub), sub
	}

	t.Run("offered and accepted only after STARTTLS", func(t *testing.T) {
		ts, sub := start(t, false)
		c := dialReady(t, ts.addr)
		if offers(c.ehlo()) {
			t.Fatal("REQUIRETLS offered in clear text")
		}
		r := c.cmd("MAIL FROM:<a@local.test> REQUIRETLS", 530)
		if !strings.HasPrefix(r.Text(), "5.7.10 ") {
			t.Fatalf("MAIL REQUIRETLS in clear text: %v", r)
		}
		c, r = startTLS(t, c)
		if !offers(r) {
			t.Fatalf("REQUIRETLS not offered after STARTTLS: %v", r.Lines)
		}
		// The parameter has no value (RFC 8689 section 4).
		c.cmd("MAIL FROM:<a@local.test> REQUIRETLS=NO", 501)
		c.cmd("MAIL FROM:<a@local.test> REQUIRETLS", 250)
		c.cmd("RCPT TO:<bob@local.test>", 250)
		c.cmd("DATA", 354)
		c.write(simpleMsg + ".\r\n")
		c.expect(250)
		c.sendMessage("a@local.test", []string{"bob@local.test"}, simpleMsg) // without it
		msgs := sub.messages()
		if len(msgs) != 2 || !msgs[0].Params.RequireTLS || msgs[1].Params.RequireTLS {
			t.Fatalf("RequireTLS of the messages: %+v", msgs)
		}
	})
	t.Run("requiretls = false", func(t *testing.T) {
		ts, sub := start(t, true)
		c := dialReady(t, ts.addr)
		c.ehlo()
		c, r := startTLS(t, c)
		if offers(r) {
			t.Fatal("REQUIRETLS offered with requiretls = false")
		}
		c.cmd("MAIL FROM:<a@local.test> REQUIRETLS", 504)
		if n := len(sub.messages()); n != 0 {
			t.Fatalf("%d messages", n)
		}
	})
}
