// Package dkim holds Sluice's DKIM signing keys (RFC 6376, RFC 8463) and
// signs messages with them: key files are read once into a Store, looked
// up by signing domain (and selector), and swapped whole when they change.
// Verification is emersion/go-msgauth's. Signing is written here (sign.go)
// on Go's crypto: go-msgauth's Signer streams the message through an
// io.Pipe and a goroutine per key, re-parses the header it was given and
// builds the field with maps and fmt, which was about 17% of the relay's
// CPU at 2 KB per message; Sign hashes the body once for all keys and
// signs the header fields already parsed. TestSignMatchesGoMsgauth keeps
// its body hash and header list equal to go-msgauth's on awkward input,
// and go-msgauth's verifier (and dkimpy in the interop tests) checks every
// signature. This package also holds the key table, key generation and
// the DNS record text.
//
// A Store is the unit later parts plug into: the dkim_sign stage builds
// one from its configuration (a reload builds a new stage and so re-reads
// the files), and a rotation job can Swap in a new table while the stage
// serves, without a reload.
package dkim

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync/atomic"
)

// Algorithms, as written in a key's DNS record (k=) and on the command
// line.
const (
	AlgoRSA     = "rsa"     // rsa-sha256, RFC 6376 section 3.3.1
	AlgoEd25519 = "ed25519" // ed25519-sha256, RFC 8463
)

// RSABits is the size of generated RSA keys. Loaded RSA keys must have at
// least MinRSABits (RFC 8301 section 3.2: verifiers may refuse smaller).
const (
	RSABits    = 2048
	MinRSABits = 1024
)

// Key is one signing key: the domain (d=) and selector (s=) it signs as.
// It is immutable once loaded and safe for concurrent use.
type Key struct {
	Domain   string // lower-case, without the trailing dot
	Selector string
	Algo     string // AlgoRSA or AlgoEd25519
	Signer   crypto.Signer
	File     string // where it was read from, for messages; "" if generated
	// Tenant, when set, restricts the key to mail of that tenant: the
	// key of a domain a tenant registered through the HTTP API must not
	// sign another tenant's mail (ForTenant).
	Tenant string
}

// ForTenant returns the keys of ks that may sign mail of tenant: those
// without a Tenant and those of tenant. It returns ks itself when all
// may (the common case, no allocation).
func ForTenant(ks []*Key, tenant string) []*Key {
	for i, k := range ks {
		if k.Tenant != "" && k.Tenant != tenant {
			out := append([]*Key{}, ks[:i]...)
			for _, k := range ks[i+1:] {
				if k.Tenant == "" || k.Tenant == tenant {
					out = append(out, k)
				}
			}
			return out
		}
	}
	return ks
}

// KeySpec names a key file and the domain and selector it signs as.
type KeySpec struct {
	Domain, Selector, File string
}

// Load reads the key files of specs. Files are PEM: PKCS #8 ("PRIVATE
// KEY", RSA or Ed25519, as `sluice dkim keygen` writes) or PKCS #1 ("RSA
// PRIVATE KEY", as openssl genrsa -traditional writes). Errors name the
// file; a domain+selector given twice is an error.
func Load(specs []KeySpec) ([]*Key, error) {
	var keys []*Key
	seen := map[string]bool{}
	for _, s := range specs {
		d := NormalizeDomain(s.Domain)
		if d == "" || s.Selector == "" || s.File == "" {
			return nil, fmt.Errorf("dkim key: domain, selector and key file are all required (got domain %q, selector %q, key %q)", s.Domain, s.Selector, s.File)
		}
		if id := s.Selector + "._domainkey." + d; seen[id] {
			return nil, fmt.Errorf("dkim key %s given twice", id)
		} else {
			seen[id] = true
		}
		pemData, err := os.ReadFile(s.File)
		if err != nil {
			return nil, fmt.Errorf("dkim key for %s: %w", d, err)
		}
		signer, algo, err := ParsePrivateKey(pemData)
		if err != nil {
			return nil, fmt.Errorf("dkim key %s: %w", s.File, err)
		}
		keys = append(keys, &Key{Domain: d, Selector: s.Selector, Algo: algo, Signer: signer, File: s.File})
	}
	return keys, nil
}

// ParsePrivateKey parses a PEM private key (see Load) and reports its
// algorithm. A file with more than one PEM block is an error.
func ParsePrivateKey(pemData []byte) (crypto.Signer, string, error) {
	b, rest := pem.Decode(pemData)
	if b == nil {
		return nil, "", errors.New("not a PEM file (want a PRIVATE KEY or RSA PRIVATE KEY block)")
	}
	if next, _ := pem.Decode(rest); next != nil {
		// Two keys concatenated: signing with the first would be a guess.
		return nil, "", errors.New("several PEM blocks: want one private key per file")
	}
	var k any
	var err error
	switch b.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	default:
		return nil, "", fmt.Errorf("PEM block %q: want PRIVATE KEY or RSA PRIVATE KEY", b.Type)
	}
	if err != nil {
		return nil, "", err
	}
	switch k := k.(type) {
	case *rsa.PrivateKey:
		if n := k.N.BitLen(); n < MinRSABits {
			return nil, "", fmt.Errorf("RSA key of %d bits: at least %d are required (RFC 8301)", n, MinRSABits)
		}
		return k, AlgoRSA, nil
	case ed25519.PrivateKey:
		return k, AlgoEd25519, nil
	}
	return nil, "", fmt.Errorf("key type %T: want RSA or Ed25519", k)
}

// Generate makes a new key: RSA of RSABits bits or Ed25519.
func Generate(algo string) (crypto.Signer, error) {
	switch algo {
	case AlgoRSA:
		return rsa.GenerateKey(rand.Reader, RSABits)
	case AlgoEd25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return nil, fmt.Errorf("unknown algorithm %q (want rsa or ed25519)", algo)
}

// MarshalPrivateKey returns k as a PKCS #8 PEM block.
func MarshalPrivateKey(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// RecordName is the DNS name of a key's TXT record:
// selector._domainkey.domain (RFC 6376 section 3.6.2.1).
func RecordName(domain, selector string) string {
	return selector + "._domainkey." + NormalizeDomain(domain)
}

// RecordValue is the TXT record that publishes k's public key (RFC 6376
// section 3.6.1; for Ed25519 the raw 32-byte key, RFC 8463 section 4.2):
// "v=DKIM1; k=rsa; p=MIIB...". A value longer than 255 octets must be
// published as several strings of one record (SplitTXT).
func RecordValue(k crypto.Signer) (string, error) {
	switch pub := k.Public().(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return "", err
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der), nil
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub), nil
	}
	return "", fmt.Errorf("key type %T: want RSA or Ed25519", k.Public())
}

// SplitTXT cuts a TXT value into character-strings of at most 255 octets
// (RFC 1035 section 3.3.14), which resolvers concatenate again.
func SplitTXT(v string) []string {
	var out []string
	for len(v) > 255 {
		out = append(out, v[:255])
		v = v[255:]
	}
	return append(out, v)
}

// NormalizeDomain lower-cases d and drops a trailing dot.
func NormalizeDomain(d string) string {
	return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(d), "."))
}

// Store is a table of keys by signing domain. Lookups are lock-free; Swap
// replaces the whole table atomically, so a message is signed with the
// keys of one table, old or new. The zero Store is empty and usable.
type Store struct {
	t        atomic.Pointer[map[string][]*Key]
	fallback atomic.Pointer[func(domain string) []*Key]
}

// SetFallback makes Keys ask f for a domain the table has no key for:
// the keys of sending domains registered through the HTTP API
// (domains.Registry.Keys). f must be safe for concurrent use, fast (it
// runs once per signed message) and return keys whose Domain is the
// domain asked. nil removes it.
func (s *Store) SetFallback(f func(domain string) []*Key) {
	if f == nil {
		s.fallback.Store(nil)
		return
	}
	s.fallback.Store(&f)
}

// NewStore returns a Store holding keys.
func NewStore(keys []*Key) *Store {
	s := &Store{}
	s.Swap(keys)
	return s
}

// Swap replaces every key with keys (a rotation, a reload of the files).
// The order of keys of one domain is kept: it is the order of the
// signatures.
func (s *Store) Swap(keys []*Key) {
	m := make(map[string][]*Key)
	for _, k := range keys {
		m[k.Domain] = append(m[k.Domain], k)
	}
	s.t.Store(&m)
}

// Keys returns domain's keys, in configured order, else the fallback's
// (SetFallback); nil when it has none. The slice must not be modified.
func (s *Store) Keys(domain string) []*Key {
	var ks []*Key
	if m := s.t.Load(); m != nil {
		ks = (*m)[NormalizeDomain(domain)]
	}
	if f := s.fallback.Load(); len(ks) == 0 && f != nil && domain != "" {
		ks = (*f)(domain)
	}
	return ks
}

// Domains lists the domains that have keys, sorted.
func (s *Store) Domains() []string {
	m := s.t.Load()
	if m == nil {
		return nil
	}
	out := make([]string, 0, len(*m))
	for d := range *m {
		out = append(out, d)
	}
	sort.Strings(out)
	return out
}
