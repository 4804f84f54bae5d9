package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/dkim"
	"github.com/sluice-mta/sluice/internal/dnsx"
	"github.com/sluice-mta/sluice/internal/domains"
	stagedkim "github.com/sluice-mta/sluice/internal/stages/dkim"
)

const dnsUsage = `Usage: sluice dns records DOMAIN [-c FILE] [--json]
       sluice dns check DOMAIN [-c FILE] [--resolver ADDR] [--json]
       sluice dns apply DOMAIN --server HOST:PORT --zone ZONE [--tsig-name N --tsig-secret B64] (sluice dns apply -h)

records prints the DNS records DOMAIN must publish for mail this relay
sends for it (docs/domains.md): SPF (sluice.domains spf_include /
spf_ips), one DKIM TXT per key of DOMAIN in the dkim_sign stages of the
configuration, DMARC (_dmarc), and the return-path MX when
sluice.domains return_path_mx is set. --json prints them as a JSON array
(kind, type, name, value, zone) for a DNS provider's API. With
sluice.dns_server the DKIM records are CNAMEs to its zone (docs/rotation.md).

check looks each record up and reports it verified (ok), missing, wrong
or unknown (no DNS answer), with the record to publish as the fix.

  -c FILE          configuration file (default pipeline.lua)
  --resolver ADDR  DNS server host:port (default: sluice.delivery's
                   resolver, else the first nameserver of /etc/resolv.conf)
  --json           JSON output

Exit codes: 0 ok (check: every record verified), 1 a record missing,
wrong or unknown, or a failure, 2 usage.
`

// runDNS implements `sluice dns records|check`.
func runDNS(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && isHelp(args[0]) {
		fmt.Fprint(stdout, dnsUsage)
		return 0
	}
	if len(args) == 0 || (args[0] != "records" && args[0] != "check" && args[0] != "apply") {
		fmt.Fprint(stderr, dnsUsage)
		return 2
	}
	if args[0] == "apply" {
		if len(args) > 1 && isHelp(args[1]) {
			fmt.Fprint(stdout, dnsApplyUsage)
			return 0
		}
		return runDNSApply(args[1:], stdout, stderr)
	}
	sub := args[0]
	fset := flag.NewFlagSet("dns "+sub, flag.ContinueOnError)
	fset.SetOutput(stderr)
	fset.Usage = func() { fmt.Fprint(stderr, dnsUsage) }
	cfgPath := fset.String("c", "pipeline.lua", "configuration file")
	asJSON := fset.Bool("json", false, "JSON output")
	resolver := fset.String("resolver", "", "DNS server host:port")
	pos, code, ok := parseInterspersed(fset, args[1:])
	if !ok {
		return code
	}
	if len(pos) != 1 {
		fmt.Fprint(stderr, dnsUsage)
		return 2
	}
	if !validLabel(dkim.NormalizeDomain(pos[0]), false) {
		fmt.Fprintf(stderr, "sluice dns %s: %q is not a domain name (letters, digits, '-', '.'; example.com)\n", sub, pos[0])
		return 2
	}
	domain := dkim.NormalizeDomain(pos[0])
	recs, cfg, code := configRecords(*cfgPath, domain, stderr)
	if code != 0 {
		return code
	}
	if sub == "records" {
		if *asJSON {
			return writeJSON(stdout, stderr, recs)
		}
		for _, r := range recs {
			fmt.Fprintf(stdout, "; %s\n%s\n", r.Kind, r.Zone)
		}
		return 0
	}
	server := *resolver
	if server == "" {
		server = cfg.Delivery.Resolver
	}
	res, err := dnsx.New(dnsx.Options{Server: server, CacheSize: -1})
	if err != nil {
		fmt.Fprintln(stderr, "sluice dns check:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := domains.Check(ctx, res, recs)
	if *asJSON {
		if c := writeJSON(stdout, stderr, st); c != 0 {
			return c
		}
	} else {
		for _, s := range st {
			state := s.State
			if state == domains.Verified {
				state = "ok"
			}
			fmt.Fprintf(stdout, "%-8s %-15s %s %s\n", state, s.Kind, s.Type, s.Name)
			if s.Detail != "" {
				fmt.Fprintf(stdout, "         %s\n", s.Detail)
			}
			if s.Fix != "" {
				fmt.Fprintf(stdout, "         fix: %s\n", s.Fix)
			}
		}
	}
	if !domains.OK(st) {
		return 1
	}
	return 0
}

func writeJSON(stdout, stderr io.Writer, v any) int {
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}

// configKeys loads the dkim_sign keys of domain named in cfg's stages.
func configKeys(cfg *config.Config, domain string) ([]domains.DKIMKey, error) {
	var specs []dkim.KeySpec
	for _, st := range cfg.Stages {
		if st.Kind != config.StageBuiltin || st.Builtin != "dkim_sign" {
			continue
		}
		ks, err := stagedkim.KeySpecs(st.Options)
		if err != nil {
			return nil, fmt.Errorf("stage %q: %w", st.Name, err)
		}
		for _, k := range ks {
			if dkim.NormalizeDomain(k.Domain) != domain {
				continue
			}
			if !filepath.IsAbs(k.File) {
				k.File = filepath.Join(filepath.Dir(cfg.File), k.File)
			}
			specs = append(specs, k)
		}
	}
	keys, err := dkim.Load(specs)
	if err != nil {
		return nil, err
	}
	return domains.KeysOf(keys, domain), nil
}

// isHelp reports whether a command's first word asks for its usage.
// parseSubcommand parses `sluice CMD SUB [flags and operands]` for the
// commands with subcommands: no arguments prints usage to stderr (exit
// 2), a help word prints it to stdout (exit 0); otherwise it returns the
// subcommand and the operands, flags parsed wherever they stand. ok
// false means return code.
func parseSubcommand(fs *flag.FlagSet, args []string, usage string, stdout, stderr io.Writer) (sub string, pos []string, code int, ok bool) {
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	if len(args) == 0 {
		fs.SetOutput(stderr)
		fs.Usage()
		return "", nil, 2, false
	}
	if isHelp(args[0]) {
		fs.SetOutput(stdout)
		fs.Usage()
		return "", nil, 0, false
	}
	pos, code, ok = parseInterspersed(fs, args[1:])
	return args[0], pos, code, ok
}

func isHelp(a string) bool { return a == "-h" || a == "-help" || a == "--help" || a == "help" }
