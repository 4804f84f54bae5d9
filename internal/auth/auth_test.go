package auth

import (
	"context"
	"encoding/base64"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/argon2"
)

var phcRe = regexp.MustCompile(`^\$argon2id\$v=19\$m=19456,t=2,p=1\$([A-Za-z0-9+/]{22})\$([A-Za-z0-9+/]{43})$`)

// The hash is a PHC string whose key is argon2id(password, salt) with the
// parameters it names: recomputed here with x/crypto directly.
func TestHashFormat(t *testing.T) {
	h, err := Hash("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	m := phcRe.FindStringSubmatch(h)
	if m == nil {
		t.Fatalf("hash %q is not a PHC argon2id string with the default parameters", h)
	}
	salt, err := base64.RawStdEncoding.DecodeString(m[1])
	if err != nil {
		t.Fatal(err)
	}
	key, err := base64.RawStdEncoding.DecodeString(m[2])
	if err != nil {
		t.Fatal(err)
	}
	want := argon2.IDKey([]byte("correct horse"), salt, 2, 19456, 1, 32)
	if string(key) != string(want) {
		t.Fatal("key is not argon2id(password, salt, t=2, m=19456, p=1)")
	}
	h2, _ := Hash("correct horse")
	if h2 == h {
		t.Fatal("two hashes of one password are equal: the salt is not random")
	}
	for pw, want := range map[string]bool{"correct horse": true, "correct horsE": false, "": false} {
		if ok, err := Verify(pw, h); err != nil || ok != want {
			t.Errorf("Verify(%q) = %v, %v; want %v", pw, ok, err, want)
		}
	}
	if err := CheckHash(h); err != nil {
		t.Fatal(err)
	}
}

func TestCheckHashRefuses(t *testing.T) {
	for _, h := range []string{
		"",
		"$2y$10$abcdefghijklmnopqrstuv", // bcrypt
		"$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$a2V5a2V5",                                           // argon2i
		"$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5", // 4 GiB
		"$argon2id$v=19$m=19456,t=2,p=1$!!$??",
	} {
		if err := CheckHash(h); err == nil {
			t.Errorf("CheckHash(%q) accepted", h)
		}
	}
}

func writeUsers(t *testing.T, path string, lines ...string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestUsersFile(t *testing.T) {
	h, _ := Hash("pw-alice-1")
	path := filepath.Join(t.TempDir(), "users")
	writeUsers(t, path, "# comment", "", "alice:acme:"+h+":Acme.example, ops@acme.example")
	u, err := OpenUsers(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id, err := u.Verify(ctx, "alice", "pw-alice-1")
	if err != nil {
		t.Fatal(err)
	}
	if id.Name != "alice" || id.Tenant != "acme" || id.Method != MethodSMTPAuth || strings.Join(id.Senders, " ") != "acme.example ops@acme.example" || !id.HasScope(ScopeSend) {
		t.Fatalf("identity %+v", id)
	}
	if _, err := u.Verify(ctx, "alice", "wrong"); !errors.Is(err, ErrBadPassword) {
		t.Fatalf("wrong password: %v", err)
	}
	if _, err := u.Verify(ctx, "bob", "pw-alice-1"); !errors.Is(err, ErrUnknownUser) {
		t.Fatalf("unknown user: %v", err)
	}

	// A change is picked up on use once the reload period passed.
	hb, _ := Hash("pw-bob-22")
	writeUsers(t, path, "bob:beta:"+hb+":")
	now := time.Now().Add(2 * reloadPeriod)
	u.now = func() time.Time { return now }
	if _, err := u.Verify(ctx, "bob", "pw-bob-22"); err != nil {
		t.Fatalf("after reload: %v", err)
	}
	if _, err := u.Verify(ctx, "alice", "pw-alice-1"); !errors.Is(err, ErrUnknownUser) {
		t.Fatalf("removed user: %v", err)
	}
	// A broken file keeps the previous users.
	writeUsers(t, path, "bob:beta:not-a-hash:")
	now = now.Add(2 * reloadPeriod)
	if _, err := u.Verify(ctx, "bob", "pw-bob-22"); err != nil {
		t.Fatalf("after a broken reload: %v", err)
	}
}

func TestParseUsersErrors(t *testing.T) {
	h, _ := Hash("password1")
	for _, text := range []string{
		"alice:acme:" + h,                        // 3 fields
		"al ice:acme:" + h + ":",                 // space in name
		"alice:acme:" + h + ":not a domain",      // bad sender
		"alice:acme:" + h + ":@example.com",      // no local part
		"alice:a:" + h + ":\nalice:b:" + h + ":", // duplicate
		"alice:acme:plain:",                      // not a hash
	} {
		if _, err := ParseUsers([]byte(text)); err == nil {
			t.Errorf("accepted %q", text)
		}
	}
	if _, err := OpenUsers(filepath.Join(t.TempDir(), "missing"), nil); err == nil {
		t.Error("a missing users file was accepted")
	}
}

func TestGuardLockout(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	g := NewGuard(GuardOptions{Free: 3, Base: time.Second, Max: 8 * time.Second, Forget: time.Hour, Now: func() time.Time { return now }})
	ip := netip.MustParseAddr("192.0.2.7")
	var got []time.Duration
	for i := 0; i < 7; i++ {
		got = append(got, g.Fail(ip, ""))
	}
	want := []time.Duration{0, 0, 0, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("lockouts %v, want %v", got, want)
		}
	}
	if d := g.Locked(ip, "anyone"); d != 8*time.Second {
		t.Fatalf("Locked = %v, want 8s", d)
	}
	if d := g.Fail(ip, ""); d != 8*time.Second {
		t.Fatalf("capped lockout %v, want 8s", d)
	}
	now = now.Add(9 * time.Second)
	if d := g.Locked(ip, ""); d != 0 {
		t.Fatalf("still locked after the lockout: %v", d)
	}
	// Another address of the same IPv6 /64 shares the count; another
	// address does not.
	a6, b6 := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
	for i := 0; i < 4; i++ {
		g.Fail(a6, "")
	}
	if g.Locked(b6, "") == 0 || g.Locked(netip.MustParseAddr("198.51.100.1"), "") != 0 {
		t.Fatal("IPv6 /64 grouping")
	}
	// Per user, across addresses; a success forgets the user.
	for i := 0; i < 4; i++ {
		g.Fail(netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), "carol")
	}
	if g.Locked(netip.MustParseAddr("198.51.100.9"), "carol") == 0 {
		t.Fatal("user not locked after failures from 4 addresses")
	}
	g.Succeed("carol")
	if g.Locked(netip.MustParseAddr("198.51.100.9"), "carol") != 0 {
		t.Fatal("user still locked after a success")
	}
	// Forget: a key idle for longer starts over.
	now = now.Add(2 * time.Hour)
	if d := g.Fail(ip, ""); d != 0 {
		t.Fatalf("count not forgotten: %v", d)
	}
}

func TestGuardBounded(t *testing.T) {
	g := NewGuard(GuardOptions{MaxKeys: 100})
	for i := 0; i < 1000; i++ {
		g.Fail(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), "")
	}
	if n := g.Len(); n > 100 {
		t.Fatalf("%d keys, want at most 100", n)
	}
}

// BenchmarkVerify is the cost of one password check with HashParams (the
// CPU time each AUTH attempt costs the server).
func BenchmarkVerify(b *testing.B) {
	h, err := Hash("correct horse battery")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if ok, _ := Verify("correct horse battery", h); !ok {
			b.Fatal("no match")
		}
	}
}
