package main

// End-to-end test of short-lived tokens against the real binary: keys
// made by `sluice token keygen`, an API key with the tokens scope minting
// a token over HTTP, mail sent with it to a go-smtp sink, and a token
// signed locally by `sluice token issue`.

import (
	"bytes"
	"encoding/json"
	"fmt"
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
	cfg := mustRead(t, h.relay.cfg) + fmt.Sprintf("\nsluice.tokens { signing_key = %q, max_lifetime = \"10m\" }\n", filepath.Join(dir, "keys", "k1.secret"))
	if err := os.WriteFile(h.relay.cfg, []byte(cfg), 0o644); err != nil {
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
	// A tampered token is refused with its code.
	bad := strings.TrimSpace(iout.String())
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
