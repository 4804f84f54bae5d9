package smtpsrc

import (
	"reflect"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
)

// Quoted local parts are accepted and kept in canonical form, with
// their quoting (issue 13 item 1); parameters travel with them.
func TestQuotedAddressesAndParams(t *testing.T) {
	sub := &fakeSub{}
	ts := startServer(t, testListener(), newChain(t, pipeline.ChainOptions{}), sub)
	c := dialReady(t, ts.addr)
	if r := c.ehlo(); !strings.Contains(strings.Join(r.Lines, "|"), "|DSN|") ||
		!strings.Contains(strings.Join(r.Lines, "|"), "|8BITMIME|") || !strings.Contains(strings.Join(r.Lines, "|"), "|SMTPUTF8|") {
		t.Errorf("EHLO: %v", r)
	}
	if r := c.cmd(`MAIL FROM:<"odd sender"@origin.example> BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=env+2B1`, 250); r.Text() != "2.1.0 Sender OK" {
		t.Errorf("MAIL: %v", r)
	}
	if r := c.cmd(`RCPT TO:<"odd user"@local.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;odd+20user@local.test`, 250); r.Text() != "2.1.5 Recipient OK" {
		t.Errorf("RCPT: %v", r)
	}
	c.cmd(`RCPT TO:<"plain"@local.test>`, 250)
	c.cmd(`RCPT TO:<"a\"b"@local.test> NOTIFY=NEVER`, 250)
	c.cmd("DATA", 354)
	c.write(simpleMsg + ".\r\n")
	c.expect(250)
	m := sub.messages()
	if len(m) != 1 {
		t.Fatalf("%d submits", len(m))
	}
	if m[0].Sender != `"odd sender"@origin.example` {
		t.Errorf("sender %q", m[0].Sender)
	}
	if want := []string{`"odd user"@local.test`, "plain@local.test", `"a\"b"@local.test`}; !reflect.DeepEqual(m[0].Rcpts, want) {
		t.Errorf("recipients %q", m[0].Rcpts)
	}
	if want := (pipeline.MailParams{Body: "8BITMIME", SMTPUTF8: true, Ret: "HDRS", EnvID: "env+1"}); m[0].Params != want {
		t.Errorf("mail params %+v", m[0].Params)
	}
	want := []pipeline.RcptParams{{Notify: []string{"SUCCESS", "FAILURE"}, ORCPT: "rfc822;odd user@local.test"}, {}, {Notify: []string{"NEVER"}}}
	if !reflect.DeepEqual(m[0].RcptP, want) {
		t.Errorf("rcpt params %+v", m[0].RcptP)
	}
}

// What is not an address, or could be taken as a route further on, is
// refused at MAIL/RCPT (issue 13 item 7), and invalid DSN parameters as
// RFC 3461 says.
func TestAddressRefusals(t *testing.T) {
	sub := &fakeSub{}
	ts := startServer(t, testListener(), newChain(t, pipeline.ChainOptions{}), sub)
	c := dialReady(t, ts.addr)
	c.ehlo()
	for _, tt := range []struct {
		cmd  string
		code int
		enh  string
	}{
		{"MAIL FROM:<a\x00b@origin.example>", 501, "5.1.7"},
		{"MAIL FROM:<a\x7fb@origin.example>", 501, "5.1.7"},
		{"MAIL FROM:<a\x01b@origin.example>", 501, "5.1.7"},
		{"MAIL FROM:<a b@origin.example>", 501, "5.1.7"},
		{`MAIL FROM:<"a>b"@origin.example>`, 501, "5.1.7"}, // its bounces could not be sent
		{"MAIL FROM:<a@bad_domain.example>", 501, "5.1.7"},
		{"MAIL FROM:<victim%example.org@origin.example>", 553, "5.1.7"},
		{"MAIL FROM:<ü@origin.example>", 553, "5.6.7"}, // no SMTPUTF8
		{"MAIL FROM:<a@origin.example> BODY=9BIT", 501, "5.5.4"},
		{"MAIL FROM:<a@origin.example> RET=ALL", 501, "5.5.4"},
	} {
		if r := c.cmd(tt.cmd, tt.code); !strings.HasPrefix(r.Text(), tt.enh+" ") {
			t.Errorf("%q: %v", tt.cmd, r)
		}
	}
	c.cmd("MAIL FROM:<a@origin.example>", 250)
	for _, tt := range []struct {
		cmd  string
		code int
		enh  string
	}{
		{"RCPT TO:<victim%example.org@local.test>", 553, "5.1.3"},
		{"RCPT TO:<victim@example.org@local.test>", 553, "5.1.3"},
		{`RCPT TO:<"victim@example.org"@local.test>`, 553, "5.1.3"},
		{"RCPT TO:<host!victim@local.test>", 553, "5.1.3"},
		{"RCPT TO:<a\x00b@local.test>", 501, "5.1.3"},
		{`RCPT TO:<"c<d"@local.test>`, 501, "5.1.3"}, // delivery would not send it
		{`RCPT TO:<"c>d"@local.test>`, 501, "5.1.3"},
		{"RCPT TO:<a..b@local.test>", 501, "5.1.3"},
		{"RCPT TO:<a@local..test>", 501, "5.1.3"},
		{"RCPT TO:<ü@local.test>", 553, "5.6.7"},
		{"RCPT TO:<bob@local.test> NOTIFY=NEVER,SUCCESS", 501, "5.5.4"},
		{"RCPT TO:<bob@local.test> NOTIFY=SOMETIMES", 501, "5.5.4"},
		{"RCPT TO:<bob@local.test> ORCPT=bob@local.test", 501, "5.5.4"},
	} {
		if r := c.cmd(tt.cmd, tt.code); !strings.HasPrefix(r.Text(), tt.enh+" ") {
			t.Errorf("%q: %v", tt.cmd, r)
		}
	}
	if r := c.cmd("RCPT TO:<victim%example.org@local.test>", 553); !strings.Contains(r.Text(), "source routing") {
		t.Errorf("the reply says why: %v", r)
	}
	c.cmd("RSET", 250)
	// With SMTPUTF8, UTF-8 addresses are fine.
	c.cmd("MAIL FROM:<jörg@origin.example> SMTPUTF8", 250)
	c.cmd("RCPT TO:<用户@local.test>", 250)
	c.cmd("QUIT", 221)
	if n := len(sub.messages()); n != 0 {
		t.Errorf("%d submits", n)
	}
	// Syntax errors are not recorded as rejected events.
	if rj := sub.rejections(); len(rj) != 0 {
		t.Errorf("rejections %+v", rj)
	}
}
