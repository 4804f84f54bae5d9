// Package apikey stores the API keys of Sluice's HTTP API in one JSON file
// and checks bearer tokens against it.
//
// A key is shown once, when it is created, as
//
//	sk_<id>_<secret>
//
// where id is 16 lower-case hex characters (the key's public name, used in
// logs, events and `sluice apikey revoke`) and secret is 32 random bytes in
// unpadded base64url. The file keeps only the SHA-256 of the whole token;
// a lookup finds the record by id and compares hashes in constant time.
// Keys carry 256 bits of entropy, so a fast hash is as good as a slow one.
//
// The file lives next to the spool, not in it: the spool's database is
// locked by the running server, while `sluice apikey create|revoke` must
// work beside it. Writers take an advisory lock on FILE.lock and replace
// the file atomically (temp file, fsync, rename, fsync of the directory).
// A Store notices changes made by other processes by stat'ing the file at
// most once per second, on use; a revoked key stops working within about a
// second, without a restart.
//
// What it is not: an authorization system. A key's tenant, scopes and
// allowed sender domains become a pipeline.Identity; stages decide the rest.
package apikey

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

// Scopes a key may carry.
const (
	ScopeSend  = "send"  // submit messages, read their status
	ScopeAdmin = "admin" // admin endpoints (GET /v1/admin/keys)
	// ScopeTokens mints short-lived tokens (POST /v1/tokens), never with
	// more scopes or senders than the key has.
	ScopeTokens = "tokens"
)

// Prefix starts every token.
const Prefix = "sk_"

const (
	idLen        = 16 // hex characters
	secretBytes  = 32
	secretLen    = 43 // base64url, unpadded, of 32 bytes
	fileVersion  = 1
	reloadPeriod = time.Second
)

// FileName is the default file name, next to the spool directory.
const FileName = "apikeys.json"

// DefaultPath returns where the keys live for a spool at spoolPath: the
// file apikeys.json in the spool directory's parent (./var/apikeys.json
// for the default ./var/spool).
func DefaultPath(spoolPath string) string {
	return filepath.Join(filepath.Dir(filepath.Clean(spoolPath)), FileName)
}

// Key is one stored key. Hash is never shown by List's callers' output.
type Key struct {
	ID      string     `json:"id"`
	Name    string     `json:"name,omitempty"`
	Tenant  string     `json:"tenant"`
	Scopes  []string   `json:"scopes"`
	Senders []string   `json:"senders,omitempty"` // allowed sender domains; empty = any
	Hash    string     `json:"hash"`              // hex SHA-256 of the token
	Created time.Time  `json:"created"`
	Revoked *time.Time `json:"revoked,omitempty"`
}

// Identity is the pipeline identity a request with this key carries.
func (k *Key) Identity() *pipeline.Identity {
	return &pipeline.Identity{
		Name: k.ID, Tenant: k.Tenant, Method: "apikey",
		Scopes: slices.Clone(k.Scopes), Senders: slices.Clone(k.Senders),
	}
}

// HasScope reports whether the key carries scope s.
func (k *Key) HasScope(s string) bool { return slices.Contains(k.Scopes, s) }

// Errors of Authenticate. Callers answer all of them with 401; they differ
// only for logs.
var (
	ErrMalformed = errors.New("apikey: malformed token")
	ErrUnknown   = errors.New("apikey: unknown key")
	ErrRevoked   = errors.New("apikey: key revoked")
)

// ErrNotFound is returned by Revoke for an unknown id.
var ErrNotFound = errors.New("apikey: no such key")

type file struct {
	Version int    `json:"version"`
	Keys    []*Key `json:"keys"`
}

type snapshot struct {
	byID map[string]*Key
	keys []*Key // in file order
}

// Store is the key file as last read. It is safe for concurrent use.
type Store struct {
	path string
	now  func() time.Time

	snap      atomic.Pointer[snapshot]
	nextCheck atomic.Int64 // unix nanos; the next stat is due then

	mu   sync.Mutex // serialises reloads and writes in this process
	info os.FileInfo
}

// Open reads the key file at path. A missing file is an empty store (keys
// may be created later, while a server runs); a corrupt one is an error.
func Open(path string) (*Store, error) {
	s := &Store{path: path, now: time.Now}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.loadLocked(); err != nil {
		return nil, err
	}
	return s, nil
}

// Path returns the file the store reads.
func (s *Store) Path() string { return s.path }

// loadLocked (re)reads the file. s.mu held.
func (s *Store) loadLocked() error {
	f, err := os.Open(s.path)
	if errors.Is(err, os.ErrNotExist) {
		s.info = nil
		s.snap.Store(&snapshot{byID: map[string]*Key{}})
		return nil
	}
	if err != nil {
		return fmt.Errorf("apikey: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return fmt.Errorf("apikey: %w", err)
	}
	var fl file
	dec := json.NewDecoder(f)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&fl); err != nil {
		return fmt.Errorf("apikey: %s: %w", s.path, err)
	}
	if fl.Version != fileVersion {
		return fmt.Errorf("apikey: %s: version %d, want %d", s.path, fl.Version, fileVersion)
	}
	snap := &snapshot{byID: make(map[string]*Key, len(fl.Keys)), keys: fl.Keys}
	for _, k := range fl.Keys {
		if k == nil || !validID(k.ID) || len(k.Hash) != 2*sha256.Size {
			return fmt.Errorf("apikey: %s: malformed key record", s.path)
		}
		if _, dup := snap.byID[k.ID]; dup {
			return fmt.Errorf("apikey: %s: key id %s appears twice", s.path, k.ID)
		}
		snap.byID[k.ID] = k
	}
	s.info = info
	s.snap.Store(snap)
	return nil
}

// maybeReload stats the file at most once per reloadPeriod and rereads it
// when it changed. A file that became unreadable keeps the last good keys
// (and the error is returned for logging); a file that was deleted empties
// the store.
func (s *Store) maybeReload() error {
	now := s.now().UnixNano()
	next := s.nextCheck.Load()
	if now < next || !s.nextCheck.CompareAndSwap(next, now+int64(reloadPeriod)) {
		return nil
	}
	return s.Reload()
}

// Reload rereads the file now if it changed since it was last read.
func (s *Store) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reloadIfChangedLocked()
}

func (s *Store) reloadIfChangedLocked() error {
	info, err := os.Stat(s.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if s.info == nil {
			return nil
		}
	case err != nil:
		return fmt.Errorf("apikey: %w", err)
	case s.info != nil && os.SameFile(info, s.info) && info.Size() == s.info.Size() && info.ModTime().Equal(s.info.ModTime()):
		return nil
	}
	return s.loadLocked()
}

// Authenticate checks a bearer token and returns its key. It never
// returns a revoked key.
func (s *Store) Authenticate(token string) (*Key, error) {
	_ = s.maybeReload() // on error, the last good keys stay in force
	id, ok := parseToken(token)
	if !ok {
		return nil, ErrMalformed
	}
	k := s.snap.Load().byID[id]
	if k == nil {
		return nil, ErrUnknown
	}
	sum := sha256.Sum256([]byte(token))
	want, err := hex.DecodeString(k.Hash)
	if err != nil || subtle.ConstantTimeCompare(sum[:], want) != 1 {
		return nil, ErrUnknown
	}
	if k.Revoked != nil {
		return nil, ErrRevoked
	}
	return k, nil
}

// List returns copies of all keys, revoked ones included, sorted by
// creation time.
func (s *Store) List() []Key {
	_ = s.maybeReload()
	snap := s.snap.Load()
	out := make([]Key, 0, len(snap.keys))
	for _, k := range snap.keys {
		c := *k
		c.Scopes = slices.Clone(k.Scopes)
		c.Senders = slices.Clone(k.Senders)
		out = append(out, c)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out
}

// CreateOptions describe a new key.
type CreateOptions struct {
	Tenant  string   // required: [A-Za-z0-9._-], 1 to 64 characters
	Scopes  []string // ScopeSend and/or ScopeAdmin; default {ScopeSend}
	Name    string   // free text label, optional
	Senders []string // allowed sender domains; empty = any
}

// Create makes a new key, stores its hash and returns the token, which is
// never stored and cannot be shown again.
func (s *Store) Create(o CreateOptions) (token string, k Key, err error) {
	if !pipeline.ValidTenant(o.Tenant) {
		return "", Key{}, fmt.Errorf("apikey: tenant %q: use 1 to 64 letters, digits, '.', '_' or '-'", o.Tenant)
	}
	if len(o.Scopes) == 0 {
		o.Scopes = []string{ScopeSend}
	}
	var scopes []string
	for _, sc := range o.Scopes {
		if sc != ScopeSend && sc != ScopeAdmin && sc != ScopeTokens {
			return "", Key{}, fmt.Errorf("apikey: unknown scope %q (want %s, %s or %s)", sc, ScopeSend, ScopeAdmin, ScopeTokens)
		}
		if !slices.Contains(scopes, sc) {
			scopes = append(scopes, sc)
		}
	}
	for _, c := range o.Name {
		if c < 0x20 || c == 0x7f {
			return "", Key{}, fmt.Errorf("apikey: name contains a control character")
		}
	}
	if len(o.Name) > 200 {
		return "", Key{}, fmt.Errorf("apikey: name longer than 200 bytes")
	}
	var senders []string
	for _, d := range o.Senders {
		d = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(d), "."))
		if d == "" || strings.ContainsAny(d, "@ \t\r\n") {
			return "", Key{}, fmt.Errorf("apikey: sender domain %q is not a domain", d)
		}
		senders = append(senders, d)
	}
	var raw [8 + secretBytes]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", Key{}, err
	}
	id := hex.EncodeToString(raw[:8])
	token = Prefix + id + "_" + base64.RawURLEncoding.EncodeToString(raw[8:])
	sum := sha256.Sum256([]byte(token))
	nk := &Key{ID: id, Name: o.Name, Tenant: o.Tenant, Scopes: scopes, Senders: senders,
		Hash: hex.EncodeToString(sum[:]), Created: s.now().UTC().Truncate(time.Second)}
	err = s.update(func(keys []*Key) ([]*Key, error) {
		for _, k := range keys {
			if k.ID == id {
				return nil, fmt.Errorf("apikey: id collision, try again")
			}
		}
		return append(keys, nk), nil
	})
	if err != nil {
		return "", Key{}, err
	}
	return token, *nk, nil
}

// Revoke marks a key revoked. Revoking a revoked key is not an error.
func (s *Store) Revoke(id string) error {
	return s.update(func(keys []*Key) ([]*Key, error) {
		for _, k := range keys {
			if k.ID == id {
				if k.Revoked == nil {
					t := s.now().UTC().Truncate(time.Second)
					k.Revoked = &t
				}
				return keys, nil
			}
		}
		return nil, ErrNotFound
	})
}

// update runs a read-modify-write of the file under the cross-process
// lock, on a fresh read of the file, and publishes the result.
func (s *Store) update(fn func([]*Key) ([]*Key, error)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.MkdirAll(filepath.Dir(s.path), 0o750); err != nil {
		return fmt.Errorf("apikey: %w", err)
	}
	unlock, err := lockFile(s.path + ".lock")
	if err != nil {
		return fmt.Errorf("apikey: lock %s.lock: %w", s.path, err)
	}
	defer unlock()
	if err := s.loadLocked(); err != nil {
		return err
	}
	// Work on deep copies: readers may hold the current snapshot.
	cur := s.snap.Load().keys
	keys := make([]*Key, len(cur))
	for i, k := range cur {
		c := *k
		keys[i] = &c
	}
	keys, err = fn(keys)
	if err != nil {
		return err
	}
	data, err := json.MarshalIndent(file{Version: fileVersion, Keys: keys}, "", "  ")
	if err != nil {
		return err
	}
	if err := writeAtomic(s.path, append(data, '\n')); err != nil {
		return fmt.Errorf("apikey: write %s: %w", s.path, err)
	}
	return s.loadLocked()
}

// writeAtomic replaces path with data: a temp file in the same directory,
// fsync, rename, fsync of the directory.
func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// parseToken returns the id of a well-formed token.
func parseToken(tok string) (string, bool) {
	if len(tok) != len(Prefix)+idLen+1+secretLen || !strings.HasPrefix(tok, Prefix) {
		return "", false
	}
	id := tok[len(Prefix) : len(Prefix)+idLen]
	if !validID(id) || tok[len(Prefix)+idLen] != '_' {
		return "", false
	}
	return id, true
}

func validID(id string) bool {
	if len(id) != idLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// ValidID reports whether id looks like a key id.
func ValidID(id string) bool { return validID(id) }
