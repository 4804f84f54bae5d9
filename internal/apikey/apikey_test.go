package apikey

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sluice-mta/sluice/internal/testutil"
)

func open(t *testing.T) (*Store, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "var", FileName)
	s, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	return s, p
}

func TestDefaultPath(t *testing.T) {
	for in, want := range map[string]string{
		"./var/spool":       "var/apikeys.json",
		"/srv/sluice/spool": "/srv/sluice/apikeys.json",
		"/srv/spool/":       "/srv/apikeys.json",
	} {
		if got := DefaultPath(in); got != want {
			t.Errorf("DefaultPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCreateAuthenticateRevoke(t *testing.T) {
	s, p := open(t)
	tok, k, err := s.Create(CreateOptions{Tenant: "acme", Name: "billing app", Senders: []string{"Example.COM."}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, Prefix+k.ID+"_") || len(tok) != 3+16+1+43 {
		t.Fatalf("token %q, id %q", tok, k.ID)
	}
	if k.Tenant != "acme" || len(k.Scopes) != 1 || k.Scopes[0] != ScopeSend || k.Senders[0] != "example.com" {
		t.Fatalf("key %+v", k)
	}
	data, _ := os.ReadFile(p)
	if strings.Contains(string(data), tok[len(Prefix)+17:]) {
		t.Fatal("the secret is stored in the file")
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want 0600", fi.Mode().Perm())
	}
	got, err := s.Authenticate(tok)
	if err != nil || got.ID != k.ID {
		t.Fatalf("Authenticate = %v, %v", got, err)
	}
	id := got.Identity()
	if id.Name != k.ID || id.Tenant != "acme" || id.Method != "apikey" || !id.HasScope("send") || id.Senders[0] != "example.com" {
		t.Fatalf("identity %+v", id)
	}

	// Wrong secret with the right id, wrong shapes.
	flip := byte('A')
	if tok[len(tok)-1] == 'A' {
		flip = 'B'
	}
	bad := tok[:len(tok)-1] + string(flip)
	for _, tk := range []string{bad, "", "sk_", tok + "x", strings.Replace(tok, "sk_", "pk_", 1), strings.ToUpper(tok)} {
		if _, err := s.Authenticate(tk); err == nil {
			t.Errorf("Authenticate(%q) succeeded", tk)
		}
	}
	if err := s.Revoke(k.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(tok); !errors.Is(err, ErrRevoked) {
		t.Fatalf("after revoke: %v", err)
	}
	if err := s.Revoke("0123456789abcdef"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke unknown: %v", err)
	}
	l := s.List()
	if len(l) != 1 || l[0].Revoked == nil {
		t.Fatalf("list %+v", l)
	}
}

func TestCreateValidates(t *testing.T) {
	s, _ := open(t)
	for _, o := range []CreateOptions{
		{},
		{Tenant: "a/b"},
		{Tenant: "a", Scopes: []string{"root"}},
		{Tenant: "a", Name: "x\ny"},
		{Tenant: "a", Senders: []string{"a@b"}},
	} {
		if _, _, err := s.Create(o); err == nil {
			t.Errorf("Create(%+v) succeeded", o)
		}
	}
	_, k, err := s.Create(CreateOptions{Tenant: "a", Scopes: []string{"admin", "send", "admin"}})
	if err != nil || len(k.Scopes) != 2 {
		t.Fatalf("%+v %v", k, err)
	}
}

// A second Store on the same file (the CLI while a server runs) sees
// changes within the reload period without a restart.
func TestOtherProcessChangesAreSeen(t *testing.T) {
	srv, p := open(t)
	cli, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	tok, k, err := cli.Create(CreateOptions{Tenant: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "new key visible", func() bool { _, err := srv.Authenticate(tok); return err == nil })
	if err := cli.Revoke(k.ID); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "revocation visible", func() bool { _, err := srv.Authenticate(tok); return errors.Is(err, ErrRevoked) })
}

func TestConcurrentCreatesKeepEveryKey(t *testing.T) {
	_, p := open(t)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := Open(p) // separate stores, as separate processes
			if err != nil {
				t.Error(err)
				return
			}
			if _, _, err := s.Create(CreateOptions{Tenant: "t"}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	s, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(s.List()); n != 8 {
		t.Fatalf("%d keys, want 8", n)
	}
}

func TestCorruptFileIsAnError(t *testing.T) {
	p := filepath.Join(t.TempDir(), FileName)
	os.WriteFile(p, []byte(`{"version":1,"keys":[{"id":"zz"}]}`), 0o600)
	if _, err := Open(p); err == nil {
		t.Fatal("Open of a corrupt file succeeded")
	}
	os.WriteFile(p, []byte(`{"version":1,"keys":[],"extra":1}`), 0o600)
	if _, err := Open(p); err == nil {
		t.Fatal("Open with an unknown field succeeded")
	}
}

// A server keeps its last good keys when the file turns bad under it.
func TestBadReloadKeepsLastGoodKeys(t *testing.T) {
	s, p := open(t)
	tok, _, err := s.Create(CreateOptions{Tenant: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); err == nil {
		t.Fatal("Reload of garbage succeeded")
	}
	if _, err := s.Authenticate(tok); err != nil {
		t.Fatalf("last good key lost: %v", err)
	}
}
