package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/apikey"
)

func apikeyCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = runAPIKey(args, &o, &e)
	return code, o.String(), e.String()
}

func TestAPIKeyCreateListRevoke(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "var", "apikeys.json")
	code, out, errOut := apikeyCLI(t, "create", "--keys", keys, "--tenant", "acme", "--name", "billing", "--scope", "send,admin", "--sender", "example.com")
	if code != 0 {
		t.Fatalf("create: %d %s", code, errOut)
	}
	tok := strings.TrimSpace(out)
	if !strings.HasPrefix(tok, apikey.Prefix) || strings.Contains(tok, "\n") {
		t.Fatalf("stdout %q is not just the key", out)
	}
	if !strings.Contains(errOut, "shown only once") {
		t.Errorf("stderr %q", errOut)
	}
	data, _ := os.ReadFile(keys)
	if bytes.Contains(data, []byte(tok)) || bytes.Contains(data, []byte(tok[20:])) {
		t.Fatal("the key itself is in the file")
	}
	st, err := apikey.Open(keys)
	if err != nil {
		t.Fatal(err)
	}
	k, err := st.Authenticate(tok)
	if err != nil || k.Tenant != "acme" || !k.HasScope("admin") || !k.HasScope("send") || k.Senders[0] != "example.com" || k.Name != "billing" {
		t.Fatalf("stored key %+v, %v", k, err)
	}

	code, out, _ = apikeyCLI(t, "create", "--keys", keys, "--tenant", "other", "--json")
	var created struct {
		ID, Tenant, Key string
		Scopes          []string
	}
	if code != 0 || json.Unmarshal([]byte(out), &created) != nil || created.Tenant != "other" || !strings.HasPrefix(created.Key, "sk_") || created.Scopes[0] != "send" {
		t.Fatalf("create --json: %d %s", code, out)
	}

	code, out, _ = apikeyCLI(t, "list", "--keys", keys)
	if code != 0 || !strings.Contains(out, k.ID) || !strings.Contains(out, created.ID) || strings.Contains(out, "hash") {
		t.Fatalf("list: %d\n%s", code, out)
	}
	code, out, _ = apikeyCLI(t, "list", "--keys", keys, "--tenant", "other", "--json")
	var listed []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &listed) != nil || len(listed) != 1 || listed[0]["hash"] != nil {
		t.Fatalf("list --json: %d %s", code, out)
	}

	// Flags after the ID work too.
	if code, out, errOut := apikeyCLI(t, "revoke", k.ID, "--keys", keys); code != 0 || !strings.Contains(out, k.ID) {
		t.Fatalf("revoke: %d %s %s", code, out, errOut)
	}
	if err := st.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Authenticate(tok); err == nil {
		t.Fatal("revoked key still authenticates")
	}
	if _, out, _ := apikeyCLI(t, "list", "--keys", keys); !strings.Contains(out, "revoked") {
		t.Fatalf("list after revoke:\n%s", out)
	}
	if code, _, errOut := apikeyCLI(t, "revoke", "--keys", keys, "0123456789abcdef"); code != 1 || !strings.Contains(errOut, "no key") {
		t.Fatalf("revoke unknown: %d %s", code, errOut)
	}
}

func TestAPIKeyUsageErrors(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "apikeys.json")
	for _, c := range []struct {
		args []string
		code int
	}{
		{nil, 2},
		{[]string{"frobnicate"}, 2},
		{[]string{"create", "--keys", keys}, 2}, // no tenant
		{[]string{"create", "--keys", keys, "--tenant", "a", "--scope", "root"}, 1}, // unknown scope
		{[]string{"create", "--keys", keys, "--tenant", "a/b"}, 1},                  // bad tenant
		{[]string{"create", "--keys", keys, "--bogus"}, 2},
		{[]string{"revoke", "--keys", keys}, 2},
		{[]string{"revoke", "--keys", keys, "a", "b"}, 2},
		{[]string{"list", "--keys", keys, "extra"}, 2},
	} {
		if code, _, _ := apikeyCLI(t, c.args...); code != c.code {
			t.Errorf("apikey %q: exit %d, want %d", c.args, code, c.code)
		}
	}
	if code, out, _ := apikeyCLI(t, "help"); code != 0 || !strings.Contains(out, "sluice apikey create") {
		t.Errorf("help: %d %s", code, out)
	}
}

// Without --keys, the key file is found through the configuration's spool.
func TestAPIKeyPathFromConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "pipeline.lua")
	spool := filepath.Join(dir, "data", "spool")
	os.WriteFile(cfg, []byte(`local sluice = require("sluice")
sluice.spool { path = "`+spool+`" }
`), 0o600)
	if code, _, errOut := apikeyCLI(t, "create", "-c", cfg, "--tenant", "acme"); code != 0 {
		t.Fatalf("create: %d %s", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "apikeys.json")); err != nil {
		t.Fatalf("key file not beside the spool: %v", err)
	}
}
