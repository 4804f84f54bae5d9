package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/dkim"
)

// TestDKIMKeygen: usage errors exit 2, an existing key is kept unless
// --force, the file is mode 0600 and parses, and the printed record
// publishes its public key.
func TestDKIMKeygen(t *testing.T) {
	dir := t.TempDir()
	gen := func(args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		code := run(append([]string{"dkim"}, args...), &out, &errb)
		return out.String(), errb.String(), code
	}
	for _, bad := range [][]string{
		{}, {"rotate"}, {"keygen"}, {"keygen", "--domain", "example.com"},
		{"keygen", "--domain", "example.com", "--selector", "s1", "--algo", "dsa"},
		{"keygen", "--domain", "exa mple.com", "--selector", "s1"},
		{"keygen", "--domain", "example.com", "--selector", "../s1"},
	} {
		if _, _, code := gen(bad...); code != 2 {
			t.Errorf("%v: exit %d, want 2", bad, code)
		}
	}
	out, errs, code := gen("keygen", "--domain", "example.com", "--selector", "s1", "--algo", "ed25519", "--out", filepath.Join(dir, "keys"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	path := filepath.Join(dir, "keys", "example.com.s1.pem")
	pemData, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	k, algo, err := dkim.ParsePrivateKey(pemData)
	if err != nil || algo != dkim.AlgoEd25519 {
		t.Fatalf("%v %s", err, algo)
	}
	rec, _ := dkim.RecordValue(k)
	if !strings.Contains(out, "name:  s1._domainkey.example.com\nvalue: "+rec+"\n") {
		t.Errorf("output does not publish the key:\n%s", out)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "keys")); fi.Mode().Perm() != 0o700 {
		t.Errorf("key directory mode %v", fi.Mode().Perm())
	}
	if _, errs, code := gen("keygen", "--domain", "example.com", "--selector", "s1", "--out", filepath.Join(dir, "keys")); code != 1 || !strings.Contains(errs, "--force") {
		t.Errorf("overwrite without --force: exit %d %s", code, errs)
	}
	if again, _ := os.ReadFile(path); !bytes.Equal(again, pemData) {
		t.Error("the existing key was changed")
	}
	os.Chmod(path, 0o644)
	if _, errs, code := gen("keygen", "--domain", "example.com", "--selector", "s1", "--out", filepath.Join(dir, "keys"), "--force"); code != 0 {
		t.Fatalf("--force: exit %d %s", code, errs)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("after --force, mode %v", fi.Mode().Perm())
	}
	if again, _ := os.ReadFile(path); bytes.Equal(again, pemData) || !bytes.Contains(again, []byte("PRIVATE KEY")) {
		t.Error("--force did not write a new key")
	}
}

// TestCheckDKIMKeys: `sluice check` reads the key files: a missing one is
// an error naming it.
func TestCheckDKIMKeys(t *testing.T) {
	dir := t.TempDir()
	var out, errb bytes.Buffer
	if code := run([]string{"dkim", "keygen", "--domain", "example.com", "--selector", "s1", "--out", dir}, &out, &errb); code != 0 {
		t.Fatal(errb.String())
	}
	cfg := func(key string) string {
		p := filepath.Join(dir, "pipeline.lua")
		os.WriteFile(p, []byte(`local sluice = require("sluice")
sluice.spool { path = "`+filepath.Join(dir, "spool")+`" }
sluice.listen_smtp { addr = "127.0.0.1:0" }
sluice.stage("dkim", sluice.builtin.dkim_sign { domain = "example.com", selector = "s1", key = "`+key+`" })
`), 0o644)
		return p
	}
	if out, code := runBin(t, "check", "-c", cfg("example.com.s1.pem")); code != 0 {
		t.Fatalf("check: exit %d\n%s", code, out)
	}
	if out, code := runBin(t, "check", "-c", cfg("missing.pem")); code != 1 || !strings.Contains(out, "missing.pem") {
		t.Fatalf("check with a missing key: exit %d\n%s", code, out)
	}
}
