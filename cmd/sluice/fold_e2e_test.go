package main

import (
	"bufio"
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-message/textproto"
	msgauth "github.com/emersion/go-msgauth/dkim"
)

// foldConfig: a Lua stage sets and adds long fields (folded by Sluice
// when the edit is applied), then dkim_sign signs them with simple header
// canonicalization: the signature holds only if the bytes delivered are,
// byte for byte, the bytes signed.
const foldConfig = `
sluice.stage("long-fields", {
  on_message = function(msg)
    msg:set_header("Subject", string.rep("a long subject ", 20))
    msg:add_header("X-Long", string.rep("word ", 600))
    msg:add_header("X-Tabs", string.rep("abcdefghi\t", 200))
    msg:add_header("X-Padded", "  padded  value\t")
    msg:add_header("X-Token", "t= " .. string.rep("A", 997))
  end,
})
sluice.stage("dkim", sluice.builtin.dkim_sign {
  domain = "sender.test", selector = "f1", key = "keys/sender.test.f1.pem",
  headers = { "From", "Subject", "X-Long", "X-Tabs", "X-Padded", "X-Token" },
  canonicalization = "simple/simple",
})
`

// TestFoldedFieldsEndToEnd: long fields a Lua stage adds reach the MX
// through the spool intact: every line within 998 characters, each field
// unfolding (RFC 5322: the CRLFs removed) to the value given without its
// end blanks, go-message reading back the values folded at single spaces;
// and a DKIM signature over them (simple/simple) verifies with go-msgauth.
func TestFoldedFieldsEndToEnd(t *testing.T) {
	e := newEnv(t, nil)
	dir := t.TempDir()
	name, value := keygen(t, filepath.Join(dir, "keys"), "sender.test", "f1", "ed25519")
	pairs := []string{}
	for k, v := range e.vars {
		pairs = append(pairs, k, v)
	}
	e.relay = newRelay(t, dir, strings.NewReplacer(pairs...).Replace(baseConfig)+foldConfig)
	e.relay.start()
	if err := sendMail(e.relay.smtp, "app@sender.test", []string{"bob@mx.test"}, msgData("App <app@sender.test>", "bob@mx.test", "fold-1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the message at the MX", func() bool { return e.mx.count() == 1 })
	got := e.mx.messages()[0].Data

	hdr, _, _ := bytes.Cut(got, []byte("\r\n\r\n"))
	for _, l := range strings.Split(string(hdr), "\r\n") {
		if len(l) > 998 {
			t.Errorf("a header line of %d characters: %.60q", len(l), l)
		}
	}
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(got)))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, value string
		clean       bool // folded at single spaces only: go-message reads it back
	}{
		{"Subject", strings.Repeat("a long subject ", 20), true},
		{"X-Long", strings.Repeat("word ", 600), true},
		{"X-Tabs", strings.Repeat("abcdefghi\t", 200), false},
		{"X-Padded", "  padded  value\t", true},
		{"X-Token", "t= " + strings.Repeat("A", 997), true},
	} {
		want := strings.Trim(c.value, " \t")
		raw, err := h.Raw(c.name)
		if err != nil || raw == nil {
			t.Fatalf("%s: missing (%v):\n%s", c.name, err, hdr)
		}
		if u := strings.ReplaceAll(string(raw), "\r\n", ""); u != c.name+": "+want {
			t.Errorf("%s unfolds to %.80q, want %.80q", c.name, u, c.name+": "+want)
		}
		if c.clean && h.Get(c.name) != want {
			t.Errorf("%s reads back %.80q, want %.80q", c.name, h.Get(c.name), want)
		}
		if len(want) > 200 && !bytes.Contains(raw, []byte("\r\n ")) && !bytes.Contains(raw, []byte("\r\n\t")) {
			t.Errorf("%s is not folded: %.80q", c.name, raw)
		}
	}
	vs, err := msgauth.VerifyWithOptions(bytes.NewReader(got), &msgauth.VerifyOptions{
		LookupTXT: func(n string) ([]string, error) {
			if n == name {
				return []string{value}, nil
			}
			return nil, nil
		}})
	if err != nil || len(vs) != 1 {
		t.Fatalf("verify: %v, %d signatures:\n%s", err, len(vs), hdr)
	}
	if v := vs[0]; v.Err != nil || v.Domain != "sender.test" || len(v.HeaderKeys) < 6 {
		t.Fatalf("signature: %+v (err %v)\n%s", v, v.Err, hdr)
	}
}
