package auth

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

// The users file holds one user a line:
//
//	name:tenant:$argon2id$v=19$m=19456,t=2,p=1$<salt>$<key>:senders
//
// name is the SMTP AUTH user name (no ':', no spaces, at most 256 bytes;
// compared exactly), tenant the tenant its mail and events belong to (may
// be empty), then the PHC hash `sluice passwd` prints, then the allowed
// senders: a comma-separated list of domains ("example.com") and
// addresses ("alerts@example.org"); empty means any sender. Blank lines
// and lines starting with '#' are ignored. A malformed line makes the
// whole file invalid (Open fails; a reload keeps the previous users).

// ScopeSend is the scope every user of the file carries (HTTP keys name
// theirs; an SMTP user may only send).
const ScopeSend = "send"

// MethodSMTPAuth is Identity.Method for users of the file.
const MethodSMTPAuth = "smtp-auth"

// Errors of Users.Verify.
var (
	ErrUnknownUser = errors.New("auth: unknown user")
	ErrBadPassword = errors.New("auth: wrong password")
)

// reloadPeriod: the file is stat'ed at most this often.
const reloadPeriod = time.Second

// maxVerifying bounds the argon2id verifications running at once (each
// takes the hash's memory, 19 MiB with HashParams): more wait.
const maxVerifying = 4

// User is one line of the users file.
type User struct {
	Name    string
	Tenant  string
	Hash    string   // PHC argon2id
	Senders []string // allowed sender domains and addresses; empty: any
}

// Identity is the identity an authenticated user gets.
func (u *User) Identity() *pipeline.Identity {
	return &pipeline.Identity{Name: u.Name, Tenant: u.Tenant, Method: MethodSMTPAuth,
		Scopes: []string{ScopeSend}, Senders: append([]string(nil), u.Senders...)}
}

// Line formats u as a users file line.
func (u *User) Line() string {
	return u.Name + ":" + u.Tenant + ":" + u.Hash + ":" + strings.Join(u.Senders, ",")
}

// Users is the users file, reread when it changes (checked at most once a
// second, on use). Safe for concurrent use.
type Users struct {
	path string
	log  *slog.Logger
	now  func() time.Time
	sem  chan struct{}

	users     atomic.Pointer[map[string]*User]
	nextCheck atomic.Int64

	mu   sync.Mutex
	info os.FileInfo
}

// OpenUsers reads the users file at path. A missing or malformed file is
// an error (a server configured with a users file must not start without
// its users). log (nil: slog.Default) receives reload outcomes.
func OpenUsers(path string, log *slog.Logger) (*Users, error) {
	if log == nil {
		log = slog.Default()
	}
	u := &Users{path: path, log: log.With("component", "auth"), now: time.Now, sem: make(chan struct{}, maxVerifying)}
	u.mu.Lock()
	defer u.mu.Unlock()
	if err := u.loadLocked(); err != nil {
		return nil, err
	}
	return u, nil
}

// Path is the file's path.
func (u *Users) Path() string { return u.path }

// Len is the number of users.
func (u *Users) Len() int { return len(*u.users.Load()) }

// ParseUsers parses the users file format (see the package comment of
// users.go). Errors name the line.
func ParseUsers(data []byte) (map[string]*User, error) {
	out := map[string]*User{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		usr, err := ParseLine(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if _, dup := out[usr.Name]; dup {
			return nil, fmt.Errorf("line %d: user %q appears twice", n, usr.Name)
		}
		out[usr.Name] = usr
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// ParseLine parses one users file line.
func ParseLine(line string) (*User, error) {
	f := strings.Split(line, ":")
	if len(f) != 4 {
		return nil, errors.New("want name:tenant:hash:senders (4 fields separated by ':')")
	}
	u := &User{Name: f[0], Tenant: f[1], Hash: f[2]}
	if err := CheckName(u.Name); err != nil {
		return nil, err
	}
	if strings.ContainsAny(u.Tenant, " \t") {
		return nil, fmt.Errorf("tenant %q: no spaces allowed", u.Tenant)
	}
	if err := CheckHash(u.Hash); err != nil {
		return nil, fmt.Errorf("user %q: %w", u.Name, err)
	}
	if f[3] != "" {
		for _, s := range strings.Split(f[3], ",") {
			s = strings.ToLower(strings.TrimSpace(s))
			if err := CheckSender(s); err != nil {
				return nil, fmt.Errorf("user %q: %w", u.Name, err)
			}
			u.Senders = append(u.Senders, s)
		}
	}
	return u, nil
}

// CheckName validates a user name.
func CheckName(name string) error {
	if name == "" || len(name) > 256 || strings.ContainsAny(name, ": \t\r\n") {
		return fmt.Errorf("user name %q: want 1 to 256 bytes without ':' or white space", name)
	}
	return nil
}

// CheckSender validates one allowed sender: a domain or an address.
func CheckSender(s string) error {
	dom := s
	if i := strings.LastIndexByte(s, '@'); i >= 0 {
		if i == 0 {
			return fmt.Errorf("sender %q: an address needs a local part (or give the domain alone)", s)
		}
		dom = s[i+1:]
	}
	if dom == "" || strings.ContainsAny(dom, ":, \t@") || !strings.Contains(dom, ".") && dom != "localhost" {
		return fmt.Errorf("sender %q: want a domain (example.com) or an address (alerts@example.com)", s)
	}
	return nil
}

func (u *Users) loadLocked() error {
	f, err := os.Open(u.path)
	if err != nil {
		return fmt.Errorf("auth: users file: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return fmt.Errorf("auth: users file: %w", err)
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(f); err != nil {
		return fmt.Errorf("auth: users file: %w", err)
	}
	m, err := ParseUsers(buf.Bytes())
	if err != nil {
		return fmt.Errorf("auth: users file %s: %w", u.path, err)
	}
	if info.Mode().Perm()&0o004 != 0 {
		u.log.Warn("users file is readable by every local user; its hashes can be attacked offline: chmod o-r it", "path", u.path, "mode", info.Mode().Perm().String())
	}
	u.info = info
	u.users.Store(&m)
	return nil
}

// Reload rereads the file now if it changed (inode, size or mtime) since
// it was last read. On error the previous users stay in force.
func (u *Users) Reload() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	info, err := os.Stat(u.path)
	if err != nil {
		return fmt.Errorf("auth: users file: %w", err)
	}
	if u.info != nil && os.SameFile(info, u.info) && info.Size() == u.info.Size() && info.ModTime().Equal(u.info.ModTime()) {
		return nil
	}
	if err := u.loadLocked(); err != nil {
		return err
	}
	u.log.Info("users file reloaded", "path", u.path, "users", u.Len())
	return nil
}

func (u *Users) maybeReload() {
	now := u.now().UnixNano()
	next := u.nextCheck.Load()
	if now < next || !u.nextCheck.CompareAndSwap(next, now+int64(reloadPeriod)) {
		return
	}
	if err := u.Reload(); err != nil {
		u.log.Error("users file not reloaded; the previous users stay in force", "path", u.path, "err", err)
	}
}

// Lookup returns the user named name, or nil.
func (u *Users) Lookup(name string) *User {
	u.maybeReload()
	return (*u.users.Load())[name]
}

// dummyHash is verified for unknown users so that they take as long as
// known ones (no user enumeration by timing).
var dummyHash = sync.OnceValue(func() string {
	h, _ := Hash("sluice-dummy-password")
	return h
})

// Verify checks name and password: the user's identity, or
// ErrUnknownUser or ErrBadPassword. At most 4 verifications run at once
// (each takes the hash's memory); Verify waits for a turn until ctx ends.
func (u *Users) Verify(ctx context.Context, name, password string) (*pipeline.Identity, error) {
	usr := u.Lookup(name)
	select {
	case u.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-u.sem }()
	if usr == nil {
		_, _ = Verify(password, dummyHash())
		return nil, ErrUnknownUser
	}
	ok, err := Verify(password, usr.Hash)
	if err != nil || !ok {
		return nil, ErrBadPassword
	}
	return usr.Identity(), nil
}
