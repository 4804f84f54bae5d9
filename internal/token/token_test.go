package token

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type revokeSet map[string]bool

func (r revokeSet) Revoked(c *Claims) bool { return r[c.ID] }

func TestVerifyErrors(t *testing.T) {
	k1, k2 := GenerateKey(), GenerateKey()
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	iss := NewIssuer(k1, 0)
	iss.now = func() time.Time { return t0 }
	good, c, err := iss.Issue(IssueOptions{Tenant: "acme", Senders: []string{"Acme.Example."}, MaxRcpts: 3, TTL: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if c.Expires.Sub(c.NotBefore) != 10*time.Minute || c.Senders[0] != "acme.example" || c.KeyID != k1.ID() {
		t.Fatalf("claims %+v", c)
	}
	other := NewIssuer(k2, 0) // k2 is not among the verifier's keys
	other.now = iss.now
	unknown, _, _ := other.Issue(IssueOptions{Tenant: "acme"})
	// wrong key: k2's signature under k1's kid
	wrongKey := strings.Replace(unknown, b64footer(k2.ID()), b64footer(k1.ID()), 1)
	// tampered payload: flip one byte of the signed message
	raw := strings.Split(good, ".")
	pb, _ := base64.RawURLEncoding.DecodeString(raw[2])
	pb[10] ^= 1
	tampered := strings.Join([]string{raw[0], raw[1], base64.RawURLEncoding.EncodeToString(pb), raw[3]}, ".")
	revoked, rc, _ := iss.Issue(IssueOptions{Tenant: "acme"})

	v, err := NewVerifier([]*PublicKey{k1.Public()}, 0, revokeSet{rc.ID: true})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		tok  string
		at   time.Time
		want error
	}{
		{"good", good, t0.Add(time.Minute), nil},
		{"expired", good, t0.Add(11 * time.Minute), ErrExpired},
		{"not yet valid", good, t0.Add(-time.Minute), ErrNotYetValid},
		{"within leeway", good, t0.Add(-2 * time.Second), nil},
		{"unknown kid", unknown, t0, ErrUnknownKey},
		{"wrong key", wrongKey, t0, ErrInvalid},
		{"tampered", tampered, t0, ErrInvalid},
		{"local purpose", "v4.local." + raw[2], t0, ErrWrongPurpose},
		{"v2", "v2.public." + raw[2], t0, ErrWrongPurpose},
		{"garbage", "hello", t0, ErrInvalid},
		{"no footer", strings.Join(raw[:3], "."), t0, ErrInvalid},
		{"garbage after the prefix", "v4.public.!!!!", t0, ErrInvalid},
		{"revoked", revoked, t0, ErrRevoked},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v.now = func() time.Time { return tc.at }
			got, err := v.Verify(tc.tok)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if got.Tenant != "acme" || got.MaxRcpts != 3 || !got.HasScope(ScopeSend) || got.ID != c.ID {
					t.Fatalf("claims %+v", got)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

// A cached token is still checked for times and revocation.
func TestVerifyCacheRechecks(t *testing.T) {
	k := GenerateKey()
	t0 := time.Now()
	tok, c, _ := NewIssuer(k, 0).Issue(IssueOptions{Tenant: "a", TTL: time.Minute})
	rev := revokeSet{}
	v, _ := NewVerifier([]*PublicKey{k.Public()}, 0, rev)
	if _, err := v.Verify(tok); err != nil {
		t.Fatal(err)
	}
	if v.cache.get(tok) == nil {
		t.Fatal("not cached")
	}
	rev[c.ID] = true
	if _, err := v.Verify(tok); !errors.Is(err, ErrRevoked) {
		t.Fatalf("revoked after caching: %v", err)
	}
	delete(rev, c.ID)
	v.now = func() time.Time { return t0.Add(2 * time.Minute) }
	if _, err := v.Verify(tok); !errors.Is(err, ErrExpired) {
		t.Fatalf("expired after caching: %v", err)
	}
	// A tampered copy of a cached token is not a cache hit.
	bad := tok[:len(tok)-80] + strings.Repeat("A", 80)
	v.now = time.Now
	if _, err := v.Verify(bad); err == nil {
		t.Fatal("tampered token accepted")
	}
}

func b64footer(kid string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(`{"kid":"` + kid + `"}`))
}

func TestIssueLimits(t *testing.T) {
	iss := NewIssuer(GenerateKey(), 5*time.Minute)
	if _, _, err := iss.Issue(IssueOptions{Tenant: "a", TTL: 6 * time.Minute}); err == nil {
		t.Fatal("lifetime over the maximum accepted")
	}
	_, c, err := iss.Issue(IssueOptions{Tenant: "a"})
	if err != nil || c.Expires.Sub(c.IssuedAt) != 5*time.Minute {
		t.Fatalf("default lifetime: %v %+v", err, c)
	}
	if _, _, err := iss.Issue(IssueOptions{Tenant: "a", Scopes: []string{"tokens"}}); err == nil {
		t.Fatal("scope tokens accepted")
	}
	if _, _, err := iss.Issue(IssueOptions{Tenant: "a", Senders: []string{"a@b.example"}}); err == nil {
		t.Fatal("address as sender domain accepted")
	}
	// A verifier with a shorter maximum refuses longer-lived tokens.
	tok, _, _ := NewIssuer(iss.key, 15*time.Minute).Issue(IssueOptions{Tenant: "a", TTL: 15 * time.Minute})
	v, _ := NewVerifier([]*PublicKey{iss.key.Public()}, 5*time.Minute, nil)
	if _, err := v.Verify(tok); !errors.Is(err, ErrInvalid) {
		t.Fatalf("over-long token: %v", err)
	}
}

func TestRotation(t *testing.T) {
	old, nw := GenerateKey(), GenerateKey()
	oldTok, _, _ := NewIssuer(old, 0).Issue(IssueOptions{Tenant: "a"})
	newTok, _, _ := NewIssuer(nw, 0).Issue(IssueOptions{Tenant: "a"})
	both, _ := NewVerifier([]*PublicKey{nw.Public(), old.Public()}, 0, nil)
	for _, tok := range []string{oldTok, newTok} {
		if _, err := both.Verify(tok); err != nil {
			t.Fatalf("during rotation: %v", err)
		}
	}
	retired, _ := NewVerifier([]*PublicKey{nw.Public()}, 0, nil)
	if _, err := retired.Verify(oldTok); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("old key retired: %v", err)
	}
	if _, err := retired.Verify(newTok); err != nil {
		t.Fatal(err)
	}
}

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	k := GenerateKey()
	sp, pp := filepath.Join(dir, "k.secret"), filepath.Join(dir, "k.public")
	os.WriteFile(sp, []byte(k.PASERK()+"\n"), 0o600)
	os.WriteFile(pp, []byte(k.Public().PASERK()+"\n"), 0o644)
	sk, err := LoadSigningKey(sp)
	if err != nil || sk.ID() != k.ID() || !strings.HasPrefix(sk.ID(), "k4.pid.") {
		t.Fatalf("signing key: %v %s", err, sk.ID())
	}
	pk, err := LoadPublicKey(pp)
	if err != nil || pk.ID() != k.ID() {
		t.Fatalf("public key: %v", err)
	}
	if _, err := LoadSigningKey(pp); err == nil {
		t.Fatal("public key loaded as a signing key")
	}
	if _, err := NewVerifier([]*PublicKey{pk, k.Public()}, 0, nil); err == nil {
		t.Fatal("duplicate key id accepted")
	}
}

// BenchmarkVerifyUncached measures one full verification (signature,
// claims, times): a token seen for the first time. Target: ≤ 100 µs.
func BenchmarkVerifyUncached(b *testing.B) {
	k := GenerateKey()
	tok, _, _ := NewIssuer(k, 0).Issue(IssueOptions{Tenant: "acme", Senders: []string{"acme.example"}, MaxRcpts: 50})
	v, _ := NewVerifier([]*PublicKey{GenerateKey().Public(), k.Public()}, 0, nil)
	v.cache = nil
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(tok); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerify is a token used again (the verified-claims cache).
func BenchmarkVerify(b *testing.B) {
	k := GenerateKey()
	tok, _, _ := NewIssuer(k, 0).Issue(IssueOptions{Tenant: "acme", Senders: []string{"acme.example"}, MaxRcpts: 50})
	v, _ := NewVerifier([]*PublicKey{GenerateKey().Public(), k.Public()}, 0, nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(tok); err != nil {
			b.Fatal(err)
		}
	}
}

// The PASERK k4 test vector for the all-zero key (paseto-standard/paserk,
// test-vectors/k4.pid.json): key ids interoperate with other PASERK
// implementations (an edge proxy in another language).
func TestPASERKVector(t *testing.T) {
	const (
		pub    = "k4.public.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
		secret = "k4.secret.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA7aie8zrakLWKjqNAqbw1zZTIVdx3iQ6Y6wEihi1naKQ"
		pid    = "k4.pid.S_XQmeEwHbbvRmiyfXfHYpLGjXGzjTRSDoT1YtTakWFE"
	)
	pk, err := ParsePublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if pk.ID() != pid || pk.PASERK() != pub {
		t.Fatalf("pid %s, paserk %s", pk.ID(), pk.PASERK())
	}
	sk, err := ParseSigningKey(secret)
	if err != nil {
		t.Fatal(err)
	}
	// The vector's secret key is the zero seed with its own public key
	// (not the zero public key above).
	if sk.PASERK() != secret || sk.Public().ID() != sk.ID() {
		t.Fatalf("secret key round trip: %s", sk.PASERK())
	}
	if p, _ := ParsePublicKey(sk.Public().PASERK()); p == nil || p.ID() != sk.ID() {
		t.Fatal("public key of the secret key")
	}
}

// No token id begins with '-', which command lines would read as a flag
// (sluice token revoke ID); each is still 16 random bytes (IsID).
func TestIDsDoNotBeginWithADash(t *testing.T) {
	iss := NewIssuer(GenerateKey(), 0)
	for range 1000 { // a sixty-fourth began with '-' before: ~16 of these
		_, c, err := iss.Issue(IssueOptions{Tenant: "a", TTL: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(c.ID, "-") || !IsID(c.ID) {
			t.Fatalf("token id %q", c.ID)
		}
	}
}
