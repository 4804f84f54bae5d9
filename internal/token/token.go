// Package token issues and verifies Sluice's short-lived signed tokens:
// PASETO v4.public (Ed25519 signatures, https://github.com/paseto-standard/paseto-spec)
// through aidanwoods.dev/go-paseto.
//
// A token is
//
//	v4.public.<payload+signature>.<footer>
//
// whose footer is the JSON object {"kid":"k4.pid...."}: the PASERK id of
// the public key that verifies it (PASERK k4.pid, a BLAKE2b-264 digest of
// the public key's PASERK). The signed claims are
//
//	jti        token id, 16 random bytes in unpadded base64url (never beginning with '-', which a command line would take for a flag)
//	tenant     the tenant the token sends for
//	scopes     "send" and/or "admin"
//	senders    allowed sender domains (empty: any the tenant may use)
//	max_rcpts  most recipients per message (0: no token limit)
//	iat, nbf, exp   RFC 3339 times, as PASETO's registered claims
//
// Verification needs only the public keys (offline: no database, no
// network), so any node or an edge proxy can do it. Several public keys
// are accepted at once and one secret key signs: rotate by adding the new
// public key everywhere, then signing with the new secret key, then
// removing the old public key once its last token expired (at most
// MaxLifetime later).
//
// Key files hold one PASERK string each: k4.secret.… (64 bytes: Ed25519
// seed and public key) for the signing key, k4.public.… (32 bytes) for a
// public key. GenerateKey makes a pair.
//
// Issuer and Verifier are safe for concurrent use.
package token

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"aidanwoods.dev/go-paseto"
	"golang.org/x/crypto/blake2b"
)

// Prefix starts every token this package issues or accepts.
const Prefix = "v4.public."

// Lifetimes.
const (
	// DefaultLifetime is a token's lifetime when none is asked for, and
	// the default of MaxLifetime.
	DefaultLifetime = 15 * time.Minute
	// DefaultLeeway is the clock skew tolerated between the issuing and
	// the verifying node, on nbf and on exp.
	DefaultLeeway = 5 * time.Second
)

// Scopes a token may carry (the apikey scopes of the same names).
const (
	ScopeSend  = "send"
	ScopeAdmin = "admin"
)

// Verification errors. Callers map them to statuses and codes (HTTP: 401
// with token_expired, token_not_yet_valid, token_unknown_key or
// token_invalid). Verify wraps them with details; test with errors.Is.
var (
	ErrExpired      = errors.New("token: expired")
	ErrNotYetValid  = errors.New("token: not yet valid")
	ErrUnknownKey   = errors.New("token: signed by an unknown key id (kid)")
	ErrInvalid      = errors.New("token: invalid (malformed, tampered or bad signature)")
	ErrWrongPurpose = errors.New("token: not a v4.public PASETO")
	ErrRevoked      = errors.New("token: revoked")
)

// Claims are a token's signed claims plus the key id of its footer.
type Claims struct {
	ID        string    `json:"jti"`
	Tenant    string    `json:"tenant"`
	Scopes    []string  `json:"scopes"`
	Senders   []string  `json:"senders,omitempty"`
	MaxRcpts  int       `json:"max_rcpts,omitempty"`
	IssuedAt  time.Time `json:"iat"`
	NotBefore time.Time `json:"nbf"`
	Expires   time.Time `json:"exp"`
	KeyID     string    `json:"-"` // footer kid
}

// HasScope reports whether the token carries scope s.
func (c *Claims) HasScope(s string) bool { return slices.Contains(c.Scopes, s) }

// ---- keys ----

// SigningKey is an Ed25519 secret key with its id.
type SigningKey struct {
	id  string
	key paseto.V4AsymmetricSecretKey
}

// PublicKey is an Ed25519 public key with its id.
type PublicKey struct {
	id  string
	key paseto.V4AsymmetricPublicKey
}

// GenerateKey makes a new signing key (and so a new key id).
func GenerateKey() *SigningKey {
	k := paseto.NewV4AsymmetricSecretKey()
	return &SigningKey{id: pid(k.Public()), key: k}
}

// ID returns the key id (PASERK k4.pid of the public key).
func (k *SigningKey) ID() string { return k.id }

// Public returns the matching public key.
func (k *SigningKey) Public() *PublicKey { return &PublicKey{id: k.id, key: k.key.Public()} }

// PASERK returns the key as a PASERK k4.secret string. Keep it secret.
func (k *SigningKey) PASERK() string {
	return "k4.secret." + base64.RawURLEncoding.EncodeToString(k.key.ExportBytes())
}

// ID returns the key id (PASERK k4.pid).
func (k *PublicKey) ID() string { return k.id }

// PASERK returns the key as a PASERK k4.public string.
func (k *PublicKey) PASERK() string {
	return "k4.public." + base64.RawURLEncoding.EncodeToString(k.key.ExportBytes())
}

// pid is PASERK k4.pid: "k4.pid." + b64(BLAKE2b-264("k4.pid." + k4.public paserk)).
func pid(pub paseto.V4AsymmetricPublicKey) string {
	const h = "k4.pid."
	d, _ := blake2b.New(33, nil)
	d.Write([]byte(h + "k4.public." + base64.RawURLEncoding.EncodeToString(pub.ExportBytes())))
	return h + base64.RawURLEncoding.EncodeToString(d.Sum(nil))
}

// ParseSigningKey reads a PASERK k4.secret string.
func ParseSigningKey(s string) (*SigningKey, error) {
	b, err := paserk(s, "k4.secret.", ed25519.PrivateKeySize)
	if err != nil {
		return nil, err
	}
	k, err := paseto.NewV4AsymmetricSecretKeyFromBytes(b)
	if err != nil {
		return nil, fmt.Errorf("token: k4.secret key: %w", err)
	}
	return &SigningKey{id: pid(k.Public()), key: k}, nil
}

// ParsePublicKey reads a PASERK k4.public string.
func ParsePublicKey(s string) (*PublicKey, error) {
	b, err := paserk(s, "k4.public.", ed25519.PublicKeySize)
	if err != nil {
		return nil, err
	}
	k, err := paseto.NewV4AsymmetricPublicKeyFromBytes(b)
	if err != nil {
		return nil, fmt.Errorf("token: k4.public key: %w", err)
	}
	return &PublicKey{id: pid(k), key: k}, nil
}

func paserk(s, prefix string, n int) ([]byte, error) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, prefix) {
		return nil, fmt.Errorf("token: want a PASERK %s… key (made by `sluice token keygen`)", prefix)
	}
	b, err := base64.RawURLEncoding.DecodeString(s[len(prefix):])
	if err != nil || len(b) != n {
		return nil, fmt.Errorf("token: malformed PASERK %s… key (want %d bytes in unpadded base64url)", prefix, n)
	}
	return b, nil
}

// LoadSigningKey reads a k4.secret key file. The file should be readable
// by the server's user only.
func LoadSigningKey(path string) (*SigningKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("token: signing key: %w", err)
	}
	k, err := ParseSigningKey(string(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// LoadPublicKey reads a k4.public key file.
func LoadPublicKey(path string) (*PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("token: public key: %w", err)
	}
	k, err := ParsePublicKey(string(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// ---- issuing ----

// Issuer signs tokens with one key.
type Issuer struct {
	key *SigningKey
	max time.Duration
	now func() time.Time
}

// NewIssuer signs with key; maxLifetime caps a token's lifetime (0:
// DefaultLifetime).
func NewIssuer(key *SigningKey, maxLifetime time.Duration) *Issuer {
	if maxLifetime <= 0 {
		maxLifetime = DefaultLifetime
	}
	return &Issuer{key: key, max: maxLifetime, now: time.Now}
}

// MaxLifetime returns the longest lifetime Issue grants.
func (i *Issuer) MaxLifetime() time.Duration { return i.max }

// KeyID returns the id of the signing key.
func (i *Issuer) KeyID() string { return i.key.id }

// IssueOptions describe a token.
type IssueOptions struct {
	Tenant   string        // required
	Scopes   []string      // ScopeSend and/or ScopeAdmin; default {ScopeSend}
	Senders  []string      // allowed sender domains; empty: no token restriction
	MaxRcpts int           // recipients per message; 0: no token limit
	TTL      time.Duration // lifetime; 0: min(DefaultLifetime, max); more than the max is an error
}

// Issue signs a new token and returns it with its claims.
func (i *Issuer) Issue(o IssueOptions) (string, *Claims, error) {
	if o.Tenant == "" {
		return "", nil, errors.New("token: a tenant is required")
	}
	if o.TTL < 0 {
		return "", nil, errors.New("token: lifetime must be positive")
	}
	if o.TTL == 0 {
		o.TTL = min(DefaultLifetime, i.max)
	}
	if o.TTL > i.max {
		return "", nil, fmt.Errorf("token: lifetime %s exceeds the maximum %s (sluice.tokens max_lifetime)", o.TTL, i.max)
	}
	if o.MaxRcpts < 0 {
		return "", nil, errors.New("token: max_rcpts must be 0 (no limit) or positive")
	}
	if len(o.Scopes) == 0 {
		o.Scopes = []string{ScopeSend}
	}
	var scopes []string
	for _, s := range o.Scopes {
		if s != ScopeSend && s != ScopeAdmin {
			return "", nil, fmt.Errorf("token: unknown scope %q (want %s or %s)", s, ScopeSend, ScopeAdmin)
		}
		if !slices.Contains(scopes, s) {
			scopes = append(scopes, s)
		}
	}
	senders, err := NormalizeDomains(o.Senders)
	if err != nil {
		return "", nil, err
	}
	var raw [16]byte
	for {
		if _, err := rand.Read(raw[:]); err != nil {
			return "", nil, err
		}
		if raw[0]>>2 != 62 { // an id that begins with '-' reads as a flag on command lines
			break
		}
	}
	now := i.now().UTC().Truncate(time.Second)
	c := &Claims{
		ID: base64.RawURLEncoding.EncodeToString(raw[:]), Tenant: o.Tenant, Scopes: scopes,
		Senders: senders, MaxRcpts: o.MaxRcpts,
		IssuedAt: now, NotBefore: now, Expires: now.Add(o.TTL), KeyID: i.key.id,
	}
	t := paseto.NewToken()
	t.SetJti(c.ID)
	t.SetString("tenant", c.Tenant)
	if err := t.Set("scopes", c.Scopes); err != nil {
		return "", nil, err
	}
	if len(c.Senders) > 0 {
		if err := t.Set("senders", c.Senders); err != nil {
			return "", nil, err
		}
	}
	if c.MaxRcpts > 0 {
		if err := t.Set("max_rcpts", c.MaxRcpts); err != nil {
			return "", nil, err
		}
	}
	t.SetIssuedAt(c.IssuedAt)
	t.SetNotBefore(c.NotBefore)
	t.SetExpiration(c.Expires)
	footer, _ := json.Marshal(struct {
		Kid string `json:"kid"`
	}{i.key.id})
	t.SetFooter(footer)
	return t.V4Sign(i.key.key, nil), c, nil
}

// NormalizeDomains lower-cases domains and drops a trailing dot; an
// address or an empty string is an error.
func NormalizeDomains(ds []string) ([]string, error) {
	var out []string
	for _, d := range ds {
		d = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(d), "."))
		if d == "" || strings.ContainsAny(d, "@ \t\r\n,") {
			return nil, fmt.Errorf("token: sender %q is not a domain", d)
		}
		if !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	return out, nil
}

// ---- verifying ----

// Revoker says whether verified claims were revoked (by token id, or by a
// tenant's "not before" time). It is consulted after the signature and
// the times check out; it must be safe for concurrent use and fast (it
// runs on every request).
type Revoker interface {
	Revoked(c *Claims) bool
}

// Verifier checks tokens against a set of public keys.
type Verifier struct {
	keys    map[string]*PublicKey
	order   []*PublicKey
	max     time.Duration
	leeway  time.Duration
	revoker Revoker
	parser  paseto.Parser
	now     func() time.Time
	cache   *verifiedCache // nil: every token is verified in full
}

// verifiedCacheSize bounds the tokens whose verified claims are kept.
const verifiedCacheSize = 4096

// verifiedCache maps a token, byte for byte, to the claims its signature
// check produced, so a client that sends many requests with one token
// pays the Ed25519 verification once. Times and revocation are checked on
// every use. When full, expired entries are dropped, and if none were,
// the whole cache (simple, and bounded: an attacker with many valid
// tokens only costs full verifications).
type verifiedCache struct {
	mu sync.RWMutex
	m  map[string]*Claims
}

func (c *verifiedCache) get(tok string) *Claims {
	c.mu.RLock()
	cl := c.m[tok]
	c.mu.RUnlock()
	return cl
}

func (c *verifiedCache) put(tok string, cl *Claims, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= verifiedCacheSize {
		for k, v := range c.m {
			if !now.Before(v.Expires.Add(DefaultLeeway)) {
				delete(c.m, k)
			}
		}
		if len(c.m) >= verifiedCacheSize {
			clear(c.m)
		}
	}
	c.m[tok] = cl
}

// NewVerifier accepts tokens signed by any of keys whose lifetime (exp −
// nbf) is at most maxLifetime (0: DefaultLifetime). revoker may be nil.
// Two keys with one id are an error.
func NewVerifier(keys []*PublicKey, maxLifetime time.Duration, revoker Revoker) (*Verifier, error) {
	if maxLifetime <= 0 {
		maxLifetime = DefaultLifetime
	}
	v := &Verifier{keys: map[string]*PublicKey{}, max: maxLifetime, leeway: DefaultLeeway,
		revoker: revoker, parser: paseto.MakeParser(nil), now: time.Now,
		cache: &verifiedCache{m: map[string]*Claims{}}}
	for _, k := range keys {
		if _, dup := v.keys[k.id]; dup {
			return nil, fmt.Errorf("token: public key %s listed twice", k.id)
		}
		v.keys[k.id] = k
		v.order = append(v.order, k)
	}
	return v, nil
}

// Keys returns the accepted public keys, in the order given.
func (v *Verifier) Keys() []*PublicKey { return slices.Clone(v.order) }

// Verify checks tok's version and purpose, its key id, its signature, its
// times (with DefaultLeeway of clock skew) and revocation, and returns its
// claims. Errors wrap ErrWrongPurpose, ErrUnknownKey, ErrInvalid,
// ErrExpired, ErrNotYetValid or ErrRevoked.
//
// The claims of a token whose signature checked out are kept (up to 4096
// tokens), so a token used again costs a map lookup rather than an
// Ed25519 verification (about 70 µs); times and revocation are checked
// on every call. Safe for concurrent use.
func (v *Verifier) Verify(tok string) (*Claims, error) {
	var c *Claims
	if v.cache != nil {
		c = v.cache.get(tok)
	}
	if c == nil {
		var err error
		if c, err = v.verify(tok); err != nil {
			return nil, err
		}
		if v.cache != nil {
			v.cache.put(tok, c, v.now())
		}
	}
	if err := v.Check(c); err != nil {
		return nil, err
	}
	cc := *c // callers may keep or change their copy
	return &cc, nil
}

// Check checks the times (with DefaultLeeway of clock skew) and the
// revocation of claims Verify returned earlier: a session that
// authenticated with a token calls it again before each use (SMTP: at
// every MAIL), so the token cannot outlive its expiry or a revocation.
// Errors wrap ErrExpired, ErrNotYetValid or ErrRevoked. Safe for
// concurrent use.
func (v *Verifier) Check(c *Claims) error {
	now := v.now()
	if !now.Before(c.Expires.Add(v.leeway)) {
		return fmt.Errorf("%w at %s", ErrExpired, c.Expires.Format(time.RFC3339))
	}
	if now.Add(v.leeway).Before(c.NotBefore) {
		return fmt.Errorf("%w before %s", ErrNotYetValid, c.NotBefore.Format(time.RFC3339))
	}
	if v.revoker != nil && v.revoker.Revoked(c) {
		return fmt.Errorf("%w: %s", ErrRevoked, c.ID)
	}
	return nil
}

// verify checks everything but times and revocation: version and purpose,
// key id, signature, claims and lifetime.
func (v *Verifier) verify(tok string) (*Claims, error) {
	if !strings.HasPrefix(tok, Prefix) {
		if strings.HasPrefix(tok, "v") && strings.Count(tok, ".") >= 2 {
			return nil, ErrWrongPurpose
		}
		return nil, ErrInvalid
	}
	// The footer is not signed-checked yet: it only picks the key, and
	// the signature covers it (PASETO's PAE includes the footer).
	rest := tok[len(Prefix):]
	dot := strings.IndexByte(rest, '.')
	if dot < 0 {
		// Malformed rather than signed by a retired key: every token
		// Sluice issues has a footer, and token_unknown_key would send
		// the operator looking at the key rotation.
		return nil, fmt.Errorf("%w: no footer with a key id", ErrInvalid)
	}
	fb, err := base64.RawURLEncoding.DecodeString(rest[dot+1:])
	if err != nil {
		return nil, fmt.Errorf("%w: footer is not base64url", ErrInvalid)
	}
	var footer struct {
		Kid string `json:"kid"`
	}
	if err := json.Unmarshal(fb, &footer); err != nil {
		return nil, fmt.Errorf("%w: footer is not JSON", ErrInvalid)
	}
	key := v.keys[footer.Kid]
	if key == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownKey, footer.Kid)
	}
	t, err := v.parser.ParseV4Public(key.key, tok, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	var c Claims
	if err := json.Unmarshal(t.ClaimsJSON(), &c); err != nil {
		return nil, fmt.Errorf("%w: claims: %v", ErrInvalid, err)
	}
	c.KeyID = footer.Kid
	if c.ID == "" || c.Tenant == "" || c.Expires.IsZero() || c.NotBefore.IsZero() || c.MaxRcpts < 0 {
		return nil, fmt.Errorf("%w: jti, tenant, nbf and exp are required", ErrInvalid)
	}
	if c.Expires.Sub(c.NotBefore) > v.max {
		return nil, fmt.Errorf("%w: lifetime %s exceeds the maximum %s", ErrInvalid, c.Expires.Sub(c.NotBefore), v.max)
	}
	return &c, nil
}

// Load reads the key files of a node's configuration (sluice.tokens):
// signingPath ("" for a verify-only node, whose Issuer is then nil) and
// publicPaths. The signing key's public key is always accepted. The
// Verifier consults revoker (may be nil).
func Load(signingPath string, publicPaths []string, maxLifetime time.Duration, revoker Revoker) (*Issuer, *Verifier, error) {
	var iss *Issuer
	var pubs []*PublicKey
	seen := map[string]bool{}
	if signingPath != "" {
		sk, err := LoadSigningKey(signingPath)
		if err != nil {
			return nil, nil, err
		}
		iss = NewIssuer(sk, maxLifetime)
		pubs = append(pubs, sk.Public())
		seen[sk.ID()] = true
	}
	for _, p := range publicPaths {
		pk, err := LoadPublicKey(p)
		if err != nil {
			return nil, nil, err
		}
		if !seen[pk.ID()] {
			seen[pk.ID()] = true
			pubs = append(pubs, pk)
		}
	}
	if len(pubs) == 0 {
		return nil, nil, errors.New("token: no keys: give sluice.tokens a signing_key or public_keys")
	}
	v, err := NewVerifier(pubs, maxLifetime, revoker)
	if err != nil {
		return nil, nil, err
	}
	return iss, v, nil
}

// MaxLifetime returns the longest lifetime (exp − nbf) Verify accepts.
func (v *Verifier) MaxLifetime() time.Duration { return v.max }

// WithClock returns a copy of the issuer that reads the time from now
// (tests, and tools that mint tokens valid from a later time).
func (i *Issuer) WithClock(now func() time.Time) *Issuer {
	c := *i
	c.now = now
	return &c
}

// IsID reports whether s has the shape of a token id (the jti): 16 bytes
// in unpadded base64url, 22 characters.
func IsID(s string) bool {
	b, err := base64.RawURLEncoding.DecodeString(s)
	return err == nil && len(b) == 16
}
