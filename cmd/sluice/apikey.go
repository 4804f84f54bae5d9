package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sluice-mta/sluice/internal/apikey"
	"github.com/sluice-mta/sluice/internal/config"
)

const apikeyUsage = `Usage:
  sluice apikey create --tenant NAME [--scope send|admin|tokens]... [--name TEXT] [--sender DOMAIN]... [--json]
  sluice apikey list [--tenant NAME] [--json]
  sluice apikey revoke ID

Every subcommand takes:
  --keys FILE   the key file (default: apikeys.json beside the spool
                directory of the configuration, ./var/apikeys.json without one)
  -c FILE       the configuration whose spool locates the key file
                (default pipeline.lua, when it exists)

create prints the new key on stdout, once: only its SHA-256 is stored.
A running server sees new and revoked keys within a second; no restart.
`

// multiFlag is a repeatable string flag; each use may also hold a
// comma-separated list.
type multiFlag []string

func (m *multiFlag) String() string { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*m = append(*m, s)
		}
	}
	return nil
}

// runAPIKey implements `sluice apikey create|list|revoke`.
func runAPIKey(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, apikeyUsage)
		return 2
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("apikey "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, apikeyUsage) }
	keysFile := fs.String("keys", "", "key file")
	cfgPath := fs.String("c", "", "configuration file (locates the key file)")
	asJSON := fs.Bool("json", false, "print JSON")
	var (
		tenant, name    *string
		scopes, senders multiFlag
	)
	switch sub {
	case "create":
		tenant = fs.String("tenant", "", "tenant of the key (required)")
		name = fs.String("name", "", "label")
		fs.Var(&scopes, "scope", "scope: send (default), admin or tokens (mint tokens: POST /v1/tokens); repeat or comma-separate")
		fs.Var(&senders, "sender", "allowed sender domain; repeatable (default: any)")
	case "list":
		tenant = fs.String("tenant", "", "only this tenant's keys")
	case "revoke":
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, apikeyUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "sluice apikey: unknown subcommand %q\n\n%s", sub, apikeyUsage)
		return 2
	}
	// Flags may come before or after the positional ID of revoke.
	pos, code, ok := parseInterspersed(fs, args)
	if !ok {
		return code
	}

	path, err := apikeyPath(*keysFile, *cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, "sluice apikey:", err)
		return 1
	}
	store, err := apikey.Open(path)
	if err != nil {
		fmt.Fprintln(stderr, "sluice apikey:", err)
		return 1
	}

	switch sub {
	case "create":
		if len(pos) != 0 {
			fmt.Fprintf(stderr, "sluice apikey create: unexpected argument %q\n", pos[0])
			return 2
		}
		if *tenant == "" {
			fmt.Fprintln(stderr, "sluice apikey create: --tenant is required")
			return 2
		}
		tok, k, err := store.Create(apikey.CreateOptions{Tenant: *tenant, Scopes: scopes, Name: *name, Senders: senders})
		if err != nil {
			fmt.Fprintln(stderr, "sluice apikey create:", err)
			return 1
		}
		if *asJSON {
			out := struct {
				apikeyInfo
				Key string `json:"key"`
			}{infoOf(k), tok}
			return printJSON(stdout, stderr, out)
		}
		fmt.Fprintln(stdout, tok)
		fmt.Fprintf(stderr, "created key %s for tenant %s (scopes: %s) in %s\nstore it now: it is shown only once\n",
			k.ID, k.Tenant, strings.Join(k.Scopes, ","), path)
		return 0

	case "list":
		if len(pos) != 0 {
			fmt.Fprintf(stderr, "sluice apikey list: unexpected argument %q\n", pos[0])
			return 2
		}
		var keys []apikeyInfo
		for _, k := range store.List() {
			if *tenant == "" || k.Tenant == *tenant {
				keys = append(keys, infoOf(k))
			}
		}
		if *asJSON {
			if keys == nil {
				keys = []apikeyInfo{}
			}
			return printJSON(stdout, stderr, keys)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tTENANT\tSCOPES\tSENDERS\tNAME\tCREATED\tSTATUS")
		for _, k := range keys {
			status := "active"
			if k.Revoked != nil {
				status = "revoked " + k.Revoked.Format(time.DateTime)
			}
			snd := strings.Join(k.Senders, ",")
			if snd == "" {
				snd = "*"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.Tenant, strings.Join(k.Scopes, ","), snd, k.Name,
				k.Created.Format(time.DateTime), status)
		}
		if err := tw.Flush(); err != nil {
			return 1
		}
		return 0

	default: // revoke
		if len(pos) != 1 {
			fmt.Fprintln(stderr, "sluice apikey revoke: give exactly one key ID (see sluice apikey list)")
			return 2
		}
		id := pos[0]
		if strings.HasPrefix(id, apikey.Prefix) && len(id) > len(apikey.Prefix)+16 {
			id = id[len(apikey.Prefix) : len(apikey.Prefix)+16] // a whole key was given
		}
		if err := store.Revoke(id); err != nil {
			if errors.Is(err, apikey.ErrNotFound) {
				fmt.Fprintf(stderr, "sluice apikey revoke: no key with ID %q in %s\n", id, path)
			} else {
				fmt.Fprintln(stderr, "sluice apikey revoke:", err)
			}
			return 1
		}
		fmt.Fprintf(stdout, "revoked key %s\n", id)
		return 0
	}
}

// apikeyInfo is a key as the CLI shows it: never the hash.
type apikeyInfo struct {
	ID      string     `json:"id"`
	Name    string     `json:"name,omitempty"`
	Tenant  string     `json:"tenant"`
	Scopes  []string   `json:"scopes"`
	Senders []string   `json:"senders,omitempty"`
	Created time.Time  `json:"created"`
	Revoked *time.Time `json:"revoked,omitempty"`
}

func infoOf(k apikey.Key) apikeyInfo {
	return apikeyInfo{ID: k.ID, Name: k.Name, Tenant: k.Tenant, Scopes: k.Scopes, Senders: k.Senders, Created: k.Created, Revoked: k.Revoked}
}

func printJSON(stdout, stderr io.Writer, v any) int {
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintln(stderr, "sluice apikey:", err)
		return 1
	}
	return 0
}

// apikeyPath resolves the key file: --keys, else the configuration's
// (given with -c, or ./pipeline.lua when it exists), else the default
// spool's.
func apikeyPath(keys, cfgPath string) (string, error) {
	if keys != "" {
		return keys, nil
	}
	if cfgPath == "" {
		if _, err := os.Stat("pipeline.lua"); err == nil {
			cfgPath = "pipeline.lua"
		}
	}
	if cfgPath == "" {
		return apikey.DefaultPath(config.Defaults().Spool.Path), nil
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return "", err
	}
	return cfg.APIKeysFile(), nil
}

// parseInterspersed parses fs's flags wherever they stand among the
// positional arguments (flag stops at the first one), and returns the
// positional arguments in order. When parsing fails, ok is false and code
// is the exit code: 0 for -h/--help (usage was printed), 2 otherwise.
func parseInterspersed(fs *flag.FlagSet, args []string) (pos []string, code int, ok bool) {
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, 0, false
			}
			return nil, 2, false
		}
		if fs.NArg() == 0 {
			return pos, 0, true
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
