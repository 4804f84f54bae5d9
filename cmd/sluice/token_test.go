package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// sluice token keygen, issue, and check of sluice.tokens key files.
func TestTokenCommands(t *testing.T) {
	dir := t.TempDir()
	out, code := runBin(t, "token", "keygen", "--out", filepath.Join(dir, "keys", "k1"))
	if code != 0 || !strings.HasPrefix(out, "k4.pid.") {
		t.Fatalf("keygen: exit %d\n%s", code, out)
	}
	if fi, err := os.Stat(filepath.Join(dir, "keys", "k1.secret")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret key file: %v %v", fi, err)
	}
	if out, code := runBin(t, "token", "keygen", "--out", filepath.Join(dir, "keys", "k1")); code != 1 || !strings.Contains(out, "exists") {
		t.Fatalf("keygen over an existing key: exit %d\n%s", code, out)
	}
	write := func(body string) string {
		p := filepath.Join(dir, "pipeline.lua")
		if err := os.WriteFile(p, []byte("sluice.listen_smtp { addr = \"127.0.0.1:0\" }\n"+body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg := write(`sluice.tokens { signing_key = "keys/k1.secret", public_keys = { "keys/k1.public" }, max_lifetime = "5m" }`)
	if out, code := runBin(t, "check", "-c", cfg); code != 0 {
		t.Fatalf("check: exit %d\n%s", code, out)
	}
	out, code = runBin(t, "token", "issue", "-c", cfg, "--tenant", "acme", "--scope", "send", "--sender", "example.com", "--ttl", "2m")
	if code != 0 || !strings.HasPrefix(out, "v4.public.") {
		t.Fatalf("issue: exit %d\n%s", code, out)
	}
	if out, code := runBin(t, "token", "issue", "-c", cfg, "--tenant", "acme", "--ttl", "6m"); code != 2 || !strings.Contains(out, "max_lifetime") {
		t.Fatalf("issue over max_lifetime: exit %d\n%s", code, out)
	}
	if out, code := runBin(t, "token", "issue", "-c", cfg, "--tenant", "a b"); code != 2 || !strings.Contains(out, "tenant") {
		t.Fatalf("issue with a bad tenant: exit %d\n%s", code, out)
	}
	if out, code := runBin(t, "token", "issue", "-c", cfg); code != 2 {
		t.Fatalf("issue without --tenant: exit %d\n%s", code, out)
	}
	// A public key file where the signing key should be; a missing file.
	for _, body := range []string{
		`sluice.tokens { signing_key = "keys/k1.public" }`,
		`sluice.tokens { public_keys = { "keys/nope.public" } }`,
	} {
		if out, code := runBin(t, "check", "-c", write(body)); code != 1 || !strings.Contains(out, "sluice.tokens") {
			t.Errorf("check %s: exit %d\n%s", body, code, out)
		}
	}
	// Verify-only node: no signing key to issue with.
	cfg = write(`sluice.tokens { public_keys = { "keys/k1.public" } }`)
	if out, code := runBin(t, "token", "issue", "-c", cfg, "--tenant", "acme"); code != 1 || !strings.Contains(out, "signing_key") {
		t.Fatalf("issue on a verify-only node: exit %d\n%s", code, out)
	}
}

// sluice token revoke: usage errors exit 2 before any request; an
// unreachable server exits 1 naming the URL.
func TestTokenRevokeUsage(t *testing.T) {
	t.Setenv("SLUICE_API_KEY", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"token", "revoke"}, "give a token ID, or --tenant T"},
		{[]string{"token", "revoke", "abc", "--tenant", "acme"}, "give a token ID, or --tenant T"},
		{[]string{"token", "revoke", "abc", "--before", "10m"}, "give a token ID, or --tenant T"},
		{[]string{"token", "revoke", "abc"}, "an API key with the tokens scope is required"},
		// A token id may begin with '-' (base64url): it is the id, not a flag.
		{[]string{"token", "revoke", "-SgMSSPunTZXef4bh_J91Q"}, "an API key with the tokens scope is required"},
		{[]string{"token", "revoke", "--", "-SgMSSPunTZXef4bh_J91Q"}, "an API key with the tokens scope is required"},
		{[]string{"token", "revoke", "-nosuchflag"}, "flag provided but not defined: -nosuchflag"},
		{[]string{"token", "revoke", "--tenant", "acme", "--before", "yesterday", "--key", "sk_x"}, `--before "yesterday"`},
	} {
		if out, code := runBin(t, tc.args...); code != 2 || !strings.Contains(out, tc.want) {
			t.Errorf("%v: exit %d\n%s", tc.args, code, out)
		}
	}
	url := "http://" + freePort(t)
	if out, code := runBin(t, "token", "revoke", "abc", "--key", "sk_x", "--url", url); code != 1 || !strings.Contains(out, "is sluice serving the HTTP API at "+url) {
		t.Errorf("unreachable server: exit %d\n%s", code, out)
	}
}
