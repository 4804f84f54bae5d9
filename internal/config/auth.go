package config

import (
	"time"

	lua "github.com/yuin/gopher-lua"
)

// Auth: sluice.auth { users = "/etc/sluice/users", ... }. SMTP AUTH's
// users file and brute-force limits (docs/config.md, docs/auth.md).
type Auth struct {
	// Users is the users file (one `name:tenant:$argon2id$...:senders`
	// line per user, made by `sluice passwd`), relative to the config
	// file's directory. "" : no users file; AUTH then goes to on_auth
	// stages only.
	Users string
	// LockoutAfter failures of one client address or user (across
	// connections) start its lockout. Default 5.
	LockoutAfter int
	// LockoutBase is the first lockout; each further failure doubles it.
	// Default 1s.
	LockoutBase time.Duration
	// LockoutMax caps a lockout. Default 15m.
	LockoutMax time.Duration
}

// DefaultAuth returns the auth defaults.
func DefaultAuth() Auth {
	return Auth{LockoutAfter: 5, LockoutBase: time.Second, LockoutMax: 15 * time.Minute}
}

// sluice.auth { users = "users", lockout_after = 5, lockout_base = "1s", lockout_max = "15m" }
func (ld *loader) auth(L *lua.LState) int {
	const fn = "sluice.auth"
	ld.singleton(fn)
	o := ld.s.CheckOpts(1, fn, "users", "lockout_after", "lockout_base", "lockout_max")
	a := &ld.cfg.Auth
	if o.String("users", &a.Users) {
		if a.Users == "" {
			o.Fail("users", "must not be empty (leave the key out for no users file)")
		}
		a.Users = ld.resolve(a.Users)
	}
	ld.positive(o, "lockout_after", &a.LockoutAfter)
	ld.duration(o, "lockout_base", &a.LockoutBase)
	ld.duration(o, "lockout_max", &a.LockoutMax)
	if a.LockoutMax < a.LockoutBase {
		o.Fail("lockout_max", "must be at least lockout_base (%s)", a.LockoutBase)
	}
	return 0
}
