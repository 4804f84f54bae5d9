package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/sluice-mta/sluice/internal/apikey"
	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/token"
)

const tokenUsage = `Usage:
  sluice token keygen --out PREFIX
      write a new key pair: PREFIX.secret (PASERK k4.secret, mode 0600) and
      PREFIX.public (PASERK k4.public); print the key id (k4.pid...)
  sluice token issue [-c FILE] --tenant T [--scope send|admin]... [--sender D]...
                     [--max-rcpts N] [--ttl 10m] [--json]
      sign a token locally with the configuration's sluice.tokens signing_key
      (no server needed) and print it

Tokens are PASETO v4.public; see docs/auth.md. --ttl defaults to 15m and may
not exceed sluice.tokens max_lifetime.
`

// runToken implements `sluice token keygen|issue`.
func runToken(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, tokenUsage)
		return 2
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("token "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, tokenUsage) }
	switch sub {
	case "keygen":
		out := fs.String("out", "", "path prefix of the key files (required)")
		if pos, code, ok := parseInterspersed(fs, args); !ok || len(pos) > 0 || *out == "" {
			if ok {
				fmt.Fprint(stderr, tokenUsage)
				code = 2
			}
			return code
		}
		k := token.GenerateKey()
		if err := os.MkdirAll(filepath.Dir(*out), 0o750); err != nil {
			fmt.Fprintln(stderr, "sluice token keygen:", err)
			return 1
		}
		for _, f := range []struct {
			path, text string
			mode       os.FileMode
		}{{*out + ".secret", k.PASERK(), 0o600}, {*out + ".public", k.Public().PASERK(), 0o644}} {
			// O_EXCL: never overwrite a key that may be in use.
			fh, err := os.OpenFile(f.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.mode)
			if err == nil {
				_, err = fmt.Fprintln(fh, f.text)
				if cerr := fh.Close(); err == nil {
					err = cerr
				}
			}
			if err != nil {
				fmt.Fprintln(stderr, "sluice token keygen:", err)
				return 1
			}
		}
		fmt.Fprintln(stdout, k.ID())
		fmt.Fprintf(stderr, "wrote %s.secret (signing key, keep it secret) and %s.public\n", *out, *out)
		return 0
	case "issue":
		cfgPath := fs.String("c", "pipeline.lua", "configuration file (its sluice.tokens signing_key signs)")
		tenant := fs.String("tenant", "", "tenant (required)")
		ttl := fs.Duration("ttl", 0, "lifetime (default 15m, at most max_lifetime)")
		maxRcpts := fs.Int("max-rcpts", 0, "most recipients per message (0: no token limit)")
		asJSON := fs.Bool("json", false, "print the token and its claims as JSON")
		var scopes, senders multiFlag
		fs.Var(&scopes, "scope", "scope: send (default) or admin; repeat or comma-separate")
		fs.Var(&senders, "sender", "allowed sender domain; repeatable (default: any)")
		if pos, code, ok := parseInterspersed(fs, args); !ok || len(pos) > 0 || *tenant == "" {
			if ok {
				fmt.Fprint(stderr, tokenUsage)
				code = 2
			}
			return code
		}
		if !apikey.ValidTenant(*tenant) {
			fmt.Fprintf(stderr, "sluice token issue: tenant %q: use 1 to 64 letters, digits, '.', '_' or '-'\n", *tenant)
			return 2
		}
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			fmt.Fprintln(stderr, "sluice token issue:", err)
			return 1
		}
		if cfg.Tokens.SigningKey == "" {
			fmt.Fprintf(stderr, "sluice token issue: %s has no sluice.tokens { signing_key = ... }\n", *cfgPath)
			return 1
		}
		sk, err := token.LoadSigningKey(cfg.Tokens.SigningKey)
		if err != nil {
			fmt.Fprintln(stderr, "sluice token issue:", err)
			return 1
		}
		tok, c, err := token.NewIssuer(sk, cfg.Tokens.MaxLifetime).Issue(token.IssueOptions{
			Tenant: *tenant, Scopes: scopes, Senders: senders, MaxRcpts: *maxRcpts, TTL: *ttl})
		if err != nil {
			fmt.Fprintln(stderr, "sluice token issue:", err)
			return 2
		}
		if *asJSON {
			b, _ := json.MarshalIndent(struct {
				Token string `json:"token"`
				*token.Claims
				KeyID string `json:"kid"`
			}{tok, c, c.KeyID}, "", "  ")
			fmt.Fprintln(stdout, string(b))
		} else {
			fmt.Fprintln(stdout, tok)
			fmt.Fprintf(stderr, "token %s for tenant %s, expires %s\n", c.ID, c.Tenant, c.Expires.Format(time.RFC3339))
		}
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, tokenUsage)
		return 0
	}
	fmt.Fprintf(stderr, "sluice token: unknown subcommand %q\n\n%s", sub, tokenUsage)
	return 2
}
