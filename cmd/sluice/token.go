package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/token"
	"github.com/sluice-mta/sluice/pipeline"
)

const tokenUsage = `Usage:
  sluice token keygen --out PREFIX
      write a new key pair: PREFIX.secret (PASERK k4.secret, mode 0600) and
      PREFIX.public (PASERK k4.public); print the key id (k4.pid...)
  sluice token issue [-c FILE] --tenant T [--scope send|admin]... [--sender D]...
                     [--max-rcpts N] [--ttl 10m] [--json]
      sign a token locally with the configuration's sluice.tokens signing_key
      (no server needed) and print it

  sluice token revoke ID [--url URL] [--key KEY]
  sluice token revoke --tenant T [--before TIME] [--url URL] [--key KEY]
      revoke one token by id (the "id" POST /v1/tokens answered, the jti),
      or every token of tenant T issued before TIME (RFC 3339 or a
      duration ago like 10m; default now), on every node: through the
      running node's HTTP API (DELETE /v1/tokens/ID, POST
      /v1/tokens/revoke) with an API key with the tokens scope (--key or
      SLUICE_API_KEY; --url or SLUICE_URL, default http://127.0.0.1:8025).
      A key revokes only its own tenant's tokens.

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
		if !pipeline.ValidTenant(*tenant) {
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
	case "revoke":
		return tokenRevoke(fs, args, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, tokenUsage)
		return 0
	}
	fmt.Fprintf(stderr, "sluice token: unknown subcommand %q\n\n%s", sub, tokenUsage)
	return 2
}

// tokenRevoke implements `sluice token revoke`.
func tokenRevoke(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) int {
	f := apiFlags(fs)
	tenant := fs.String("tenant", "", "revoke every token of this tenant (the key's) issued before --before")
	before := fs.String("before", "", "with --tenant: RFC 3339 time, or a duration ago like 10m (default now)")
	pos, code, ok := parseInterspersed(fs, idsAsArgs(fs, args))
	if !ok {
		return code
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "sluice token revoke: "+format+"\n", a...)
		return 2
	}
	switch {
	case len(pos) == 1 && *tenant == "" && *before == "":
	case len(pos) == 0 && *tenant != "":
	default:
		return usageErr("give a token ID, or --tenant T [--before TIME]")
	}
	if *f.key == "" {
		*f.key = os.Getenv("SLUICE_API_KEY")
	}
	if *f.key == "" {
		return usageErr("an API key with the tokens scope is required: --key or SLUICE_API_KEY")
	}
	c := f.client()
	c.prog = "sluice token"
	defer c.close()
	q := url.Values{"source": {"cli"}}
	if len(pos) == 1 {
		if _, code := c.do(stderr, "revoke", http.MethodDelete, "/v1/tokens/"+url.PathEscape(pos[0]), q, nil); code != 0 {
			return code
		}
		fmt.Fprintf(stdout, "revoked token %s\n", pos[0])
		return 0
	}
	req := map[string]string{"tenant": *tenant}
	if *before != "" {
		if d, err := time.ParseDuration(*before); err == nil {
			req["before"] = time.Now().Add(-d).UTC().Format(time.RFC3339)
		} else if _, err := time.Parse(time.RFC3339, *before); err == nil {
			req["before"] = *before
		} else {
			return usageErr("--before %q: want an RFC 3339 time or a duration like 10m", *before)
		}
	}
	body, _ := json.Marshal(req)
	ans, code := c.do(stderr, "revoke", http.MethodPost, "/v1/tokens/revoke", q, body)
	if code != 0 {
		return code
	}
	var a struct {
		Tenant string    `json:"tenant"`
		Before time.Time `json:"before"`
	}
	_ = json.Unmarshal(ans, &a)
	fmt.Fprintf(stdout, "revoked every token of tenant %s issued before %s\n", a.Tenant, a.Before.Format(time.RFC3339))
	return 0
}

// idsAsArgs puts "--" before an argument that is a token id beginning
// with '-' (ids are 16 random bytes in base64url, and a sixty-fourth of
// those issued before this check began with '-'), so that the flag
// parser takes it as the id instead of an unknown flag. An argument
// that names one of fs's flags is left alone.
func idsAsArgs(fs *flag.FlagSet, args []string) []string {
	var out []string
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if strings.HasPrefix(a, "-") && fs.Lookup(name) == nil && token.IsID(a) {
			out = append(out, "--")
		}
		out = append(out, a)
	}
	return out
}
