package tracking

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// Link kinds: the first path segment after /t/ and the kind byte inside
// the signed token (so a click token cannot be replayed as an
// unsubscribe token).
const (
	KindOpen        = 'o'
	KindClick       = 'c'
	KindUnsubscribe = 'u'
)

// tokenVersion is the first byte of every token.
const tokenVersion = 1

// macLen is the length of the truncated HMAC-SHA256 tag: 128 bits.
const macLen = 16

// MinSecretLen is the shortest key secret accepted, in bytes.
const MinSecretLen = 32

// maxURLLen bounds the link carried in a click token.
const maxURLLen = 4096

// Link is what a tracking URL carries, signed: everything the endpoint
// needs without looking anything up, so links keep working after the
// message's data is purged.
type Link struct {
	Kind      byte      // KindOpen, KindClick or KindUnsubscribe
	Tenant    string    // the message's tenant
	MessageID string    // the relay's message id
	Recipient string    // the envelope recipient; "" when the message had several
	Accepted  time.Time // when the relay accepted the message (seconds)
	URL       string    // the original link (KindClick only)
}

// Key is one HMAC key: ID is derived from the secret (the first 4 bytes
// of SHA-256 over a label and the secret), so a token names the key that
// signed it without anyone choosing ids.
type Key struct {
	ID     [4]byte
	secret []byte
}

// NewKey makes a key from a secret of at least MinSecretLen bytes.
func NewKey(secret []byte) (*Key, error) {
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("a tracking key needs at least %d bytes of secret, got %d", MinSecretLen, len(secret))
	}
	h := sha256.New()
	h.Write([]byte("sluice-tracking-key-id\x00"))
	h.Write(secret)
	k := &Key{secret: append([]byte(nil), secret...)}
	copy(k.ID[:], h.Sum(nil))
	return k, nil
}

// LoadKey reads a key file: its contents, without surrounding white
// space, are the secret (for example the output of
// `head -c 32 /dev/urandom | base64`).
func LoadKey(path string) (*Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k, err := NewKey([]byte(strings.TrimSpace(string(b))))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// Keyring signs with one key and verifies with it and any number of
// older ones (rotation: add the new key as signing key, keep the old one
// as a verification key until its links no longer matter). It is
// immutable and safe for concurrent use.
type Keyring struct {
	sign   *Key
	verify []*Key
}

// NewKeyring returns a keyring that signs with sign and also accepts
// tokens of the others.
func NewKeyring(sign *Key, others ...*Key) (*Keyring, error) {
	if sign == nil {
		return nil, errors.New("tracking: a signing key is required")
	}
	kr := &Keyring{sign: sign, verify: []*Key{sign}}
	for _, k := range others {
		if k != nil && !hmac.Equal(k.secret, sign.secret) {
			kr.verify = append(kr.verify, k)
		}
	}
	return kr, nil
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// Sign returns the token of l: base64url (no padding) of version, kind,
// key id, acceptance time, tenant, message id, recipient, URL and a
// 128-bit HMAC-SHA256 tag over all of them.
func (kr *Keyring) Sign(l *Link) string {
	b := make([]byte, 0, 64+len(l.Tenant)+len(l.MessageID)+len(l.Recipient)+len(l.URL))
	b = append(b, tokenVersion, l.Kind)
	b = append(b, kr.sign.ID[:]...)
	b = binary.AppendUvarint(b, uint64(max(l.Accepted.Unix(), 0)))
	b = appendStr(b, l.Tenant)
	b = appendStr(b, l.MessageID)
	b = appendStr(b, l.Recipient)
	b = appendStr(b, l.URL)
	m := hmac.New(sha256.New, kr.sign.secret)
	m.Write(b)
	b = m.Sum(b)[:len(b)+macLen]
	return base64.RawURLEncoding.EncodeToString(b)
}

// ErrBadToken is every verification failure: malformed, truncated,
// altered, of another kind, or signed with a key not in the ring. The
// endpoint answers 404 to all of them alike.
var ErrBadToken = errors.New("tracking: invalid token")

// Verify checks tok against the ring and returns the link it carries,
// which must be of kind. It allocates only the link's strings.
func (kr *Keyring) Verify(kind byte, tok string) (*Link, error) {
	if len(tok) > base64.RawURLEncoding.EncodedLen(maxURLLen+1024) {
		return nil, ErrBadToken
	}
	var stack [512]byte
	b := stack[:0]
	if n := base64.RawURLEncoding.DecodedLen(len(tok)); n > len(stack) {
		b = make([]byte, 0, n)
	}
	b, err := base64.RawURLEncoding.AppendDecode(b, []byte(tok))
	if err != nil || len(b) < 2+4+1+4+macLen {
		return nil, ErrBadToken
	}
	if b[0] != tokenVersion || b[1] != kind {
		return nil, ErrBadToken
	}
	body, tag := b[:len(b)-macLen], b[len(b)-macLen:]
	ok := false
	for _, k := range kr.verify {
		if [4]byte(b[2:6]) != k.ID {
			continue
		}
		m := hmac.New(sha256.New, k.secret)
		m.Write(body)
		if hmac.Equal(m.Sum(nil)[:macLen], tag) {
			ok = true
			break
		}
	}
	if !ok {
		return nil, ErrBadToken
	}
	p := body[6:]
	secs, n := binary.Uvarint(p)
	if n <= 0 {
		return nil, ErrBadToken
	}
	p = p[n:]
	var f [4]string
	for i := range f {
		l, n := binary.Uvarint(p)
		if n <= 0 || l > uint64(len(p)-n) {
			return nil, ErrBadToken
		}
		f[i] = string(p[n : n+int(l)])
		p = p[n+int(l):]
	}
	if len(p) != 0 {
		return nil, ErrBadToken
	}
	return &Link{Kind: kind, Accepted: time.Unix(int64(secs), 0).UTC(), Tenant: f[0], MessageID: f[1], Recipient: f[2], URL: f[3]}, nil
}
