package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/dryrun"
)

const testUsage = `Usage:
  sluice test -c FILE [--from A] [--to B]... [--ip IP] [--helo NAME] [--auth USER]
              [--listener NAME] [--source smtp|http] [--resolver HOST:PORT] [--json] [FILE.eml|-]
      run a message through every stage of FILE's pipeline (Lua, built-ins and
      plugins for real) without spooling or delivering it, and print each stage
      hook's verdict and edits, the route of each recipient, the events that
      would be written and the reply the client would have seen.
      Without FILE.eml a small message is generated; with one, --from and --to
      default to its From and To/Cc fields.
  sluice test -c FILE --route ADDRESS [--from A] [--resolver HOST:PORT] [--json]
      where would mail to ADDRESS go? Runs on_route only, and looks up the MX
      hosts of an MX route and the TLS policy that would apply (the route's,
      the domain's MTA-STS policy, each host's DANE TLSA records).

Exit codes: 0 the run completed (whatever the pipeline decided; see the
reply), 1 the configuration or the message could not be loaded, 2 usage.
`

func runTest(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, testUsage); fs.PrintDefaults() }
	cfgPath := fs.String("c", "pipeline.lua", "configuration file")
	from := fs.String("from", "", "envelope sender (default: the message's From, else the null sender)")
	var to multiFlag
	fs.Var(&to, "to", "recipient; repeat or comma-separate (default: the message's To and Cc)")
	ip := fs.String("ip", "127.0.0.1", "client IP address")
	helo := fs.String("helo", "client.example", "EHLO name (SMTP)")
	listener := fs.String("listener", "", "the SMTP listener (name or address) the client connects to; its relay_networks apply (default: the first)")
	user := fs.String("auth", "", "authenticate as this user (SMTP) or API key id (HTTP)")
	source := fs.String("source", "smtp", "source: smtp or http")
	resolver := fs.String("resolver", "", "DNS resolver host:port for stages and MX lookups (default: sluice.delivery's resolver, else the system's)")
	route := fs.String("route", "", "only answer where mail to this address would go")
	asJSON := fs.Bool("json", false, "print the trace as JSON")
	logLevel := fs.String("log-level", "warn", "level of the stages' logs on stderr: debug, info, warn, error")
	pos, code, ok := parseInterspersed(fs, args)
	if !ok {
		return code
	}
	if len(pos) > 1 {
		fmt.Fprintln(stderr, "sluice test: at most one message file")
		return 2
	}
	addr, err := netip.ParseAddr(*ip)
	if err != nil {
		fmt.Fprintf(stderr, "sluice test: --ip %q: not an IP address\n", *ip)
		return 2
	}
	log, err := newLogger(stderr, "text", *logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "sluice test:", err)
		return 2
	}
	o := dryrun.Options{Source: *source, Listener: *listener, RemoteIP: addr.Unmap(), HELO: *helo, Auth: *user, From: *from, To: to}
	if len(pos) == 1 {
		var data []byte
		if pos[0] == "-" {
			data, err = io.ReadAll(os.Stdin)
		} else {
			data, err = os.ReadFile(pos[0])
		}
		if err != nil {
			fmt.Fprintln(stderr, "sluice test:", err)
			return 1
		}
		o.Data = data
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, "sluice test:", err)
		return 1
	}
	r, err := dryrun.New(cfg, *resolver, log)
	if err != nil {
		fmt.Fprintln(stderr, "sluice test:", err)
		return 1
	}
	defer r.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var tr *dryrun.Trace
	if *route != "" {
		tr, err = r.Route(ctx, *route, o)
	} else {
		tr, err = r.Run(ctx, o)
	}
	if err != nil {
		fmt.Fprintln(stderr, "sluice test:", err)
		return 2
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(tr); err != nil {
			return 1
		}
		return 0
	}
	if err := tr.WriteText(stdout); err != nil {
		return 1
	}
	return 0
}
