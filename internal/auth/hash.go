// Package auth holds Sluice's built-in authentication parts: argon2id
// password hashes in PHC string format, the users file that maps SMTP AUTH
// users to an identity (tenant, allowed senders), and the brute-force
// Guard that locks out client addresses and user names after repeated
// failures. The identity it produces is a pipeline.Identity, the same type
// HTTP API keys (and, later, signed tokens) produce, so every source is
// authorized by one rule (internal/relay, senders.go).
package auth

import (
	"errors"
	"fmt"
	"strings"

	"github.com/alexedwards/argon2id"
)

// HashParams are the argon2id parameters `sluice passwd` hashes with:
// 19 MiB of memory, 2 passes, 1 lane, a 16-byte salt and a 32-byte key,
// the OWASP password-storage recommendation (2024). Verification uses
// the parameters written in each hash, so raising these later keeps old
// lines valid.
var HashParams = &argon2id.Params{Memory: 19 * 1024, Iterations: 2, Parallelism: 1, SaltLength: 16, KeyLength: 32}

// Verification limits: a hash whose parameters exceed them is refused
// when the users file is loaded, so a bad line cannot make each AUTH
// attempt take gigabytes or minutes.
const (
	maxMemoryKiB  = 256 * 1024 // 256 MiB
	maxIterations = 16
	maxLanes      = 16
)

// Hash returns password's argon2id hash in PHC string format
// ("$argon2id$v=19$m=19456,t=2,p=1$<salt>$<key>", unpadded base64),
// with a random salt. It fails only when the system has no randomness.
func Hash(password string) (string, error) {
	return argon2id.CreateHash(password, HashParams)
}

// CheckHash reports whether phc is an argon2id hash in PHC format whose
// parameters stay within Sluice's verification limits.
func CheckHash(phc string) error {
	if !strings.HasPrefix(phc, "$argon2id$") {
		return errors.New("not an argon2id hash (want $argon2id$v=19$m=...,t=...,p=...$salt$key; make one with `sluice passwd`)")
	}
	p, _, key, err := argon2id.DecodeHash(phc)
	if err != nil {
		return fmt.Errorf("bad argon2id hash: %w", err)
	}
	if p.Memory > maxMemoryKiB || p.Iterations > maxIterations || p.Parallelism > maxLanes || p.Iterations == 0 || p.Parallelism == 0 {
		return fmt.Errorf("argon2id parameters m=%d,t=%d,p=%d exceed the limits (m<=%d KiB, 1<=t<=%d, 1<=p<=%d)",
			p.Memory, p.Iterations, p.Parallelism, maxMemoryKiB, maxIterations, maxLanes)
	}
	if len(key) < 16 {
		return errors.New("argon2id key shorter than 16 bytes")
	}
	return nil
}

// Verify reports whether password matches phc (constant time in the key
// comparison). An error means phc is not a valid hash.
func Verify(password, phc string) (bool, error) {
	return argon2id.ComparePasswordAndHash(password, phc)
}
