package tracking

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"
)

func testKey(t testing.TB, seed string) *Key {
	t.Helper()
	k, err := NewKey([]byte(strings.Repeat(seed, MinSecretLen/len(seed)+1)))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func testRing(t testing.TB, sign *Key, others ...*Key) *Keyring {
	t.Helper()
	kr, err := NewKeyring(sign, others...)
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

var sample = Link{Kind: KindClick, Tenant: "acme", MessageID: "01JD0000000000000000000000", Recipient: "bob@example.org",
	Accepted: time.Unix(1_790_000_000, 0).UTC(), URL: "https://shop.example/p?id=1&x=%C3%A9#frag"}

func TestTokenRoundTrip(t *testing.T) {
	kr := testRing(t, testKey(t, "k1"))
	tok := kr.Sign(&sample)
	if strings.ContainsAny(tok, "+/=") {
		t.Fatalf("token %q is not base64url without padding", tok)
	}
	l, err := kr.Verify(KindClick, tok)
	if err != nil {
		t.Fatal(err)
	}
	if *l != sample {
		t.Fatalf("got %+v\nwant %+v", *l, sample)
	}
}

// TestTokenForgeries: tampered, truncated, extended, of another kind,
// signed with an unknown key, or not base64 at all: ErrBadToken, every
// time.
func TestTokenForgeries(t *testing.T) {
	kr := testRing(t, testKey(t, "k1"))
	tok := kr.Sign(&sample)
	raw, _ := base64.RawURLEncoding.DecodeString(tok)
	enc := base64.RawURLEncoding.EncodeToString
	var bad []string
	for i := range raw { // every single-byte change
		b := bytes.Clone(raw)
		b[i] ^= 0x01
		bad = append(bad, enc(b))
	}
	for n := 0; n < len(tok); n += 3 { // every truncation
		bad = append(bad, tok[:n])
	}
	bad = append(bad, tok+"A", tok+"AAAA", "", "!!!!", strings.Repeat("A", 100000))
	// The URL swapped for an attacker's, the tag left as it was.
	evil := sample
	evil.URL = "https://evil.example/"
	other := testRing(t, testKey(t, "attacker"))
	forged, _ := base64.RawURLEncoding.DecodeString(other.Sign(&evil))
	withOurTag := append(bytes.Clone(forged[:len(forged)-macLen]), raw[len(raw)-macLen:]...)
	bad = append(bad, enc(withOurTag), other.Sign(&evil), other.Sign(&sample))
	// Re-signed with an unknown key that claims our key's id.
	claim := bytes.Clone(forged)
	copy(claim[2:6], kr.sign.ID[:])
	bad = append(bad, enc(claim))
	for i, b := range bad {
		if _, err := kr.Verify(KindClick, b); !errors.Is(err, ErrBadToken) {
			t.Fatalf("forgery %d (%q) verified: %v", i, b, err)
		}
	}
	// The right token as another kind.
	if _, err := kr.Verify(KindUnsubscribe, tok); !errors.Is(err, ErrBadToken) {
		t.Fatalf("a click token verified as an unsubscribe token")
	}
}

// TestKeyRotation: after rotating (new signing key, old one kept for
// verification) old links still verify and new links use the new key;
// once the old key is dropped, its links stop working.
func TestKeyRotation(t *testing.T) {
	old, cur := testKey(t, "old"), testKey(t, "new")
	before := testRing(t, old)
	oldTok := before.Sign(&sample)
	after := testRing(t, cur, old)
	if _, err := after.Verify(KindClick, oldTok); err != nil {
		t.Fatalf("an old link broke after rotation: %v", err)
	}
	newTok := after.Sign(&sample)
	if _, err := before.Verify(KindClick, newTok); err == nil {
		t.Fatal("the new key's link verified with the old ring only")
	}
	if _, err := testRing(t, cur).Verify(KindClick, oldTok); err == nil {
		t.Fatal("the old key's link verified after the key was dropped")
	}
}

func TestKeyTooShort(t *testing.T) {
	if _, err := NewKey([]byte("short")); err == nil {
		t.Fatal("a 5-byte secret was accepted")
	}
	if _, err := NewKeyring(nil); err == nil {
		t.Fatal("a keyring without a signing key was accepted")
	}
}
