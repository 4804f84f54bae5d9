package main

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/testutil"
)

// keygen runs `sluice dkim keygen` and returns the record name and value
// it printed.
func keygen(t *testing.T, dir, domain, selector, algo string) (name, value string) {
	t.Helper()
	var out, errb bytes.Buffer
	if code := run([]string{"dkim", "keygen", "--domain", domain, "--selector", selector, "--algo", algo, "--out", dir}, &out, &errb); code != 0 {
		t.Fatalf("keygen exit %d: %s", code, errb.String())
	}
	m := regexp.MustCompile(`(?m)^name:\s+(\S+)\nvalue:\s+(.+)$`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("keygen output:\n%s", out.String())
	}
	fi, err := os.Stat(filepath.Join(dir, domain+"."+selector+".pem"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	return m[1], m[2]
}

// dkimConfig is baseConfig plus a dkim_sign stage BEFORE a Lua stage that
// rewrites Subject at on_message: the signature must cover the final
// header, so it is made after every edit, wherever the stage stands.
const dkimConfig = `
sluice.stage("dkim", sluice.builtin.dkim_sign {
  keys = {
    { domain = "sender.test", selector = "r1", key = "keys/sender.test.r1.pem" },
    { domain = "sender.test", selector = "e1", key = "keys/sender.test.e1.pem" },
    { domain = "other.test", selector = "o1", key = "keys/other.test.o1.pem" },
    { domain = "relay.e2e.test", selector = "b1", key = "keys/relay.e2e.test.b1.pem" },
  },
  bounce_domain = "relay.e2e.test",
})
sluice.stage("late-edit", {
  on_message = function(msg)
    msg:set_header("Subject", "rewritten after the dkim stage")
    if msg.sender == "brand@sender.test" then
      msg:set_scratch("dkim.domain", "other.test")
    end
  end,
})
`

// TestDKIMSignEndToEnd: mail relayed over real SMTP to a sink carries an
// RSA-2048 and an Ed25519 signature that dkimpy verifies; a second From
// added afterwards breaks both; a Lua stage picks another signing domain;
// the DSN Sluice generates is signed with the bounce domain's key and
// verifies too.
func TestDKIMSignEndToEnd(t *testing.T) {
	testutil.NeedDKIMPy(t)
	e := newEnv(t, nil)
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	recs := map[string]string{}
	for _, k := range [][3]string{{"sender.test", "r1", "rsa"}, {"sender.test", "e1", "ed25519"}, {"other.test", "o1", "ed25519"}, {"relay.e2e.test", "b1", "rsa"}} {
		n, v := keygen(t, keys, k[0], k[1], k[2])
		recs[n] = v
	}
	e.smart.rcptReply = func(rcpt string) error {
		if strings.HasPrefix(rcpt, "nobody@") {
			return smtpErr(550, [3]int{5, 1, 1}, "no such user")
		}
		return nil
	}
	pairs := []string{}
	for k, v := range e.vars {
		pairs = append(pairs, k, v)
	}
	admin := freePort(t)
	e.relay = newRelay(t, dir, strings.NewReplacer(pairs...).Replace(baseConfig)+dkimConfig+
		`sluice.listen_admin { addr = "`+admin+`" }`+"\n")
	e.relay.start()

	if err := sendMail(e.relay.smtp, "app@sender.test", []string{"bob@mx.test"}, msgData("App <app@sender.test>", "bob@mx.test", "dkim-1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the message at the MX", func() bool { return e.mx.count() == 1 })
	got := e.mx.messages()[0].Data
	if !bytes.Contains(got, []byte("Subject: rewritten after the dkim stage")) {
		t.Fatalf("the late edit is missing:\n%s", got)
	}
	res := testutil.DKIMPyVerify(t, got, recs)
	want := "pass d=sender.test s=r1 a=rsa-sha256\npass d=sender.test s=e1 a=ed25519-sha256"
	if strings.Join(res, "\n") != want {
		t.Fatalf("dkimpy:\n%s\nwant:\n%s\nmessage:\n%s", strings.Join(res, "\n"), want, got)
	}
	forged := bytes.Replace(got, []byte("From: App"), []byte("From: ceo@sender.test\r\nFrom: App"), 1)
	for _, l := range testutil.DKIMPyVerify(t, forged, recs) {
		if !strings.HasPrefix(l, "fail ") {
			t.Errorf("with a second From, dkimpy says %q", l)
		}
	}

	// A Lua stage chose the signing domain.
	if err := sendMail(e.relay.smtp, "brand@sender.test", []string{"carol@mx.test"}, msgData("brand@sender.test", "carol@mx.test", "dkim-2")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second message", func() bool { return e.mx.count() == 2 })
	if res := testutil.DKIMPyVerify(t, e.mx.messages()[1].Data, recs); strings.Join(res, "\n") != "pass d=other.test s=o1 a=ed25519-sha256" {
		t.Errorf("Lua-chosen domain: dkimpy %q", res)
	}

	// A DSN: the smarthost refuses the recipient; the bounce goes to
	// sender.test's MX (the mx sink), signed as relay.e2e.test.
	if err := sendMail(e.relay.smtp, "app@sender.test", []string{"nobody@smart.test"}, msgData("app@sender.test", "nobody@smart.test", "dkim-3")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the DSN at the MX", func() bool { return e.mx.count() == 3 })
	dsn := e.mx.messages()[2]
	if dsn.From != "" || !bytes.Contains(dsn.Data, []byte("multipart/report")) {
		t.Fatalf("third message is not a DSN (from %q):\n%s", dsn.From, dsn.Data)
	}
	if res := testutil.DKIMPyVerify(t, dsn.Data, recs); strings.Join(res, "\n") != "pass d=relay.e2e.test s=b1 a=rsa-sha256" {
		t.Errorf("DSN: dkimpy %q\n%s", res, dsn.Data)
	}
	// The node's metrics count the signatures: RSA for the first and third
	// messages (sender.test's two keys) and the DSN; Ed25519 for the
	// first, the second (other.test) and the third.
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`sluice_dkim_signatures_total{algo="rsa"} 3`, `sluice_dkim_signatures_total{algo="ed25519"} 3`} {
		if !strings.Contains(string(body), want+"\n") {
			t.Errorf("metrics lack %q:\n%s", want, grepLines(string(body), "sluice_dkim"))
		}
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestDKIMReloadRereadsKeys: replacing a key file and running `sluice
// reload` makes the next message signed with the new key (the rotation
// path that needs no restart).
func TestDKIMReloadRereadsKeys(t *testing.T) {
	testutil.NeedDKIMPy(t)
	e := newEnv(t, nil)
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	name, old := keygen(t, keys, "sender.test", "e1", "ed25519")
	pairs := []string{}
	for k, v := range e.vars {
		pairs = append(pairs, k, v)
	}
	e.relay = newRelay(t, dir, strings.NewReplacer(pairs...).Replace(baseConfig)+`
sluice.stage("dkim", sluice.builtin.dkim_sign { domain = "sender.test", selector = "e1", key = "keys/sender.test.e1.pem" })
`)
	e.relay.start()
	send := func(n int, subject string) []byte {
		t.Helper()
		if err := sendMail(e.relay.smtp, "app@sender.test", []string{"bob@mx.test"}, msgData("app@sender.test", "bob@mx.test", subject)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "message "+subject, func() bool { return e.mx.count() == n })
		return e.mx.messages()[n-1].Data
	}
	first := send(1, "before")
	if res := testutil.DKIMPyVerify(t, first, map[string]string{name: old}); res[0] != "pass d=sender.test s=e1 a=ed25519-sha256" {
		t.Fatalf("before the reload: %q", res)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"dkim", "keygen", "--domain", "sender.test", "--selector", "e1", "--algo", "ed25519", "--out", keys, "--force"}, &out, &errb); code != 0 {
		t.Fatal(errb.String())
	}
	fresh := regexp.MustCompile(`(?m)^value:\s+(.+)$`).FindStringSubmatch(out.String())[1]
	if o, code := runBin(t, "reload", "-c", e.relay.cfg); code != 0 {
		t.Fatalf("reload: exit %d\n%s", code, o)
	}
	second := send(2, "after")
	if res := testutil.DKIMPyVerify(t, second, map[string]string{name: fresh}); res[0] != "pass d=sender.test s=e1 a=ed25519-sha256" {
		t.Errorf("after the reload, with the new record: %q", res)
	}
	if res := testutil.DKIMPyVerify(t, second, map[string]string{name: old}); !strings.HasPrefix(res[0], "fail ") {
		t.Errorf("after the reload, with the old record: %q", res)
	}
}
