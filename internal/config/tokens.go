package config

import (
	"time"

	lua "github.com/yuin/gopher-lua"
)

// Tokens: sluice.tokens { signing_key = "keys/signing.paserk",
// public_keys = { "keys/signing.pub.paserk" }, max_lifetime = "15m" }.
// Short-lived PASETO v4.public tokens (internal/token, docs/auth.md).
// Without sluice.tokens, bearer tokens are refused and POST /v1/tokens
// answers 404.
type Tokens struct {
	// SigningKey is a PASERK k4.secret file (made by `sluice token
	// keygen`), relative to the config file's directory. "" : this node
	// verifies tokens but cannot issue them.
	SigningKey string
	// PublicKeys are PASERK k4.public files; a token signed by any of
	// them is accepted. The signing key's own public key is always
	// accepted, listed or not.
	PublicKeys []string
	// MaxLifetime caps a token's lifetime, at issue and at verification.
	// Default 15m; at most 24h.
	MaxLifetime time.Duration
}

// Enabled reports whether sluice.tokens was configured.
func (t Tokens) Enabled() bool { return t.SigningKey != "" || len(t.PublicKeys) > 0 }

// DefaultTokens returns the token defaults (disabled).
func DefaultTokens() Tokens { return Tokens{MaxLifetime: 15 * time.Minute} }

// sluice.tokens { signing_key = "path", public_keys = { "path", ... }, max_lifetime = "15m" }
func (ld *loader) tokens(L *lua.LState) int {
	const fn = "sluice.tokens"
	ld.singleton(fn)
	o := ld.s.CheckOpts(1, fn, "signing_key", "public_keys", "max_lifetime")
	t := &ld.cfg.Tokens
	if o.String("signing_key", &t.SigningKey) {
		if t.SigningKey == "" {
			o.Fail("signing_key", "must not be empty (leave the key out on verify-only nodes)")
		}
		t.SigningKey = ld.resolve(t.SigningKey)
	}
	ld.paths(o, "public_keys", &t.PublicKeys)
	ld.duration(o, "max_lifetime", &t.MaxLifetime)
	if t.MaxLifetime > 24*time.Hour {
		o.Fail("max_lifetime", "must be at most 24h (tokens are meant to be short-lived; use an API key for long-lived access)")
	}
	if !t.Enabled() {
		o.Fail("signing_key", "give signing_key, public_keys or both")
	}
	return 0
}
