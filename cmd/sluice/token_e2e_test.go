package main

// End-to-end test of short-lived tokens against the real binary: keys
// made by `sluice token keygen`, an API key with the tokens scope minting
// a token over HTTP, mail sent with it to a go-smtp sink, and a token
// signed locally by `sluice token issue`.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/smtp"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestTokenEndToEnd(t *testing.T) {
	dir := t.TempDir()
	keygen := exec.Command(binPath, "token", "keygen", "--out", filepath.Join(dir, "keys", "k1"))
	var kout, kerr bytes.Buffer
	keygen.Stdout, keygen.Stderr = &kout, &kerr
	if err := keygen.Run(); err != nil {
		t.Fatalf("token keygen: %v: %s", err, kerr.String())
	}
	kid := strings.TrimSpace(kout.String())
	if !strings.HasPrefix(kid, "k4.pid.") {
		t.Fatalf("keygen printed %q", kid)
	}

	h := newHTTPEnv(t)
	subAddr := freePort(t)
	cfg := mustRead(t, h.relay.cfg) + fmt.Sprintf("sluice.listen_smtp { name = \"submission\", addr = %q, auth = \"required\" }\n", subAddr)
	first := cfg + fmt.Sprintf("sluice.tokens { signing_key = %q, max_lifetime = \"10m\" }\n", filepath.Join(dir, "keys", "k1.secret"))
	if err := os.WriteFile(h.relay.cfg, []byte(first), 0o644); err != nil {
		t.Fatal(err)
	}
	h.start()
	minter, _ := h.createKey("acme", "send", "tokens")

	r := h.do("POST", "/v1/tokens", minter, []byte(`{"lifetime":"2m","max_rcpts":1}`), nil)
	if r.status != 201 {
		t.Fatalf("POST /v1/tokens: %s", r)
	}
	var minted struct {
		Token     string    `json:"token"`
		KeyID     string    `json:"kid"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	if err := json.Unmarshal(r.body, &minted); err != nil || minted.KeyID != kid || time.Until(minted.ExpiresAt) > 2*time.Minute {
		t.Fatalf("minted %s (%v)", r.body, err)
	}
	msg := []byte(`{"from":"app@sender.test","to":"fn@smart.test","subject":"from a function","text":"hi"}`)
	if r := h.do("POST", "/v1/messages", minted.Token, msg, nil); r.status != 202 {
		t.Fatalf("send with token: %s", r)
	}
	waitFor(t, "the smarthost got the token's message", func() bool { return h.smart.count() == 1 })
	two := []byte(`{"from":"app@sender.test","to":["a@smart.test","b@smart.test"],"text":"hi"}`)
	if r := h.do("POST", "/v1/messages", minted.Token, two, nil); r.status != 403 || r.apiError().Error.Code != "too_many_recipients" || r.apiError().Error.Field != "to" {
		t.Fatalf("over max_rcpts: %s", r)
	}
	if r := h.do("GET", "/.well-known/sluice-keys.json", "", nil, nil); r.status != 200 || !strings.Contains(string(r.body), `"`+kid+`":"k4.public.`) {
		t.Fatalf("keys: %s", r)
	}

	// A token signed offline by the CLI from the same configuration.
	issue := exec.Command(binPath, "token", "issue", "-c", h.relay.cfg, "--tenant", "acme", "--ttl", "1m")
	var iout, ierr bytes.Buffer
	issue.Stdout, issue.Stderr = &iout, &ierr
	if err := issue.Run(); err != nil {
		t.Fatalf("token issue: %v: %s", err, ierr.String())
	}
	if r := h.do("POST", "/v1/messages", strings.TrimSpace(iout.String()), msg, nil); r.status != 202 {
		t.Fatalf("send with a CLI token: %s", r)
	}
	waitFor(t, "the smarthost got the CLI token's message", func() bool { return h.smart.count() == 2 })
	// The same token over SMTP: AUTH OAUTHBEARER and XOAUTH2 on a
	// submission listener (loopback, so AUTH is offered without TLS).
	for _, mech := range []string{"OAUTHBEARER", "XOAUTH2"} {
		if err := sendWithToken(subAddr, mech, minted.Token, "app@sender.test", "fn2@smart.test"); err != nil {
			t.Fatalf("%s: %v", mech, err)
		}
	}
	waitFor(t, "the smarthost got the SMTP token messages", func() bool { return h.smart.count() == 4 })
	if err := sendWithToken(subAddr, "XOAUTH2", minted.Token[:len(minted.Token)-70]+strings.Repeat("A", 70), "app@sender.test", "x@smart.test"); err == nil ||
		!strings.Contains(err.Error(), "535") {
		t.Fatalf("bad token over XOAUTH2: %v", err)
	}
	// Rotation by `sluice reload`: k2 signs, k1 is still accepted; then
	// k1 is retired and its tokens are refused.
	if out, code := runBin(t, "token", "keygen", "--out", filepath.Join(dir, "keys", "k2")); code != 0 {
		t.Fatalf("keygen k2: %s", out)
	}
	kid2 := ""
	setTokens := func(line string) {
		t.Helper()
		body := cfg + line + "\n"
		if err := os.WriteFile(h.relay.cfg, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, code := runBin(t, "reload", "-c", h.relay.cfg); code != 0 || strings.Contains(out, "not applied") {
			t.Fatalf("reload: exit %d\n%s", code, out)
		}
	}
	setTokens(fmt.Sprintf("sluice.tokens { signing_key = %q, public_keys = { %q } }", filepath.Join(dir, "keys", "k2.secret"), filepath.Join(dir, "keys", "k1.public")))
	oldTok := minted.Token
	if r := h.do("POST", "/v1/messages", oldTok, msg, nil); r.status != 202 {
		t.Fatalf("k1 token after the rotation: %s", r)
	}
	r = h.do("POST", "/v1/tokens", minter, []byte(`{}`), nil)
	if err := json.Unmarshal(r.body, &minted); err != nil || r.status != 201 || minted.KeyID == kid {
		t.Fatalf("mint after the rotation: %s", r)
	}
	kid2 = minted.KeyID
	setTokens(fmt.Sprintf("sluice.tokens { signing_key = %q }", filepath.Join(dir, "keys", "k2.secret")))
	if r := h.do("POST", "/v1/messages", oldTok, msg, nil); r.status != 401 || r.apiError().Error.Code != "token_unknown_key" {
		t.Fatalf("k1 token after k1 was retired: %s", r)
	}
	if r := h.do("POST", "/v1/messages", minted.Token, msg, nil); r.status != 202 {
		t.Fatalf("k2 token: %s", r)
	}
	if r := h.do("GET", "/.well-known/sluice-keys.json", "", nil, nil); !strings.Contains(string(r.body), kid2) || strings.Contains(string(r.body), kid) {
		t.Fatalf("keys after the rotation: %s", r)
	}
	// A tampered token is refused with its code.
	bad := minted.Token // signed by k2, still listed
	bad = bad[:20] + string(rune('A'+(bad[20]-'A'+1)%26)) + bad[21:]
	if r := h.do("POST", "/v1/messages", bad, msg, nil); r.status != 401 || r.apiError().Error.Code != "token_invalid" {
		t.Fatalf("tampered token: %s", r)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// sendWithToken submits one message after AUTH mech (OAUTHBEARER or
// XOAUTH2) with tok, speaking SMTP line by line.
func sendWithToken(addr, mech, tok, from, to string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("fn.test"); err != nil {
		return err
	}
	var ir string
	if mech == "OAUTHBEARER" {
		ir = "n,a=fn,\x01auth=Bearer " + tok + "\x01\x01"
	} else {
		ir = "user=fn\x01auth=Bearer " + tok + "\x01\x01"
	}
	if err := c.Auth(rawAuth{mech, ir}); err != nil {
		return err
	}
	if err := c.Mail(from); err != nil {
		return err
	}
	if err := c.Rcpt(to); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(w, "From: %s\r\nTo: %s\r\nSubject: via %s\r\n\r\nhi\r\n", from, to, mech); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

// rawAuth is a net/smtp Auth sending one initial response; a challenge
// (an OAUTHBEARER error) is answered with ^A, as RFC 7628 section 3.2.3 says.
type rawAuth struct{ mech, ir string }

func (a rawAuth) Start(*smtp.ServerInfo) (string, []byte, error) { return a.mech, []byte(a.ir), nil }
func (a rawAuth) Next(_ []byte, more bool) ([]byte, error) {
	if more {
		return []byte{1}, nil
	}
	return nil, nil
}
