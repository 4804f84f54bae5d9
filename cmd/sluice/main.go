// Command sluice is the Sluice mail relay: `sluice serve -c pipeline.lua`
// runs a node; `sluice check` validates a configuration; `sluice apikey`
// manages HTTP API keys; `sluice send` submits a message over the HTTP API;
// `sluice suppression` manages a tenant's suppression list over it.
//
// Exit codes: 0 ok, 1 failure, 2 usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"runtime/trace"
	"syscall"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/logx"
	"github.com/sluice-mta/sluice/internal/memlimit"
	"github.com/sluice-mta/sluice/internal/server"
)

const usage = `sluice — a programmable mail relay

Usage:
  sluice serve   -c FILE     run the relay with the configuration FILE
  sluice check   -c FILE     validate FILE as serve would (Lua, keys, stages, TLS files) and exit
  sluice reload  -c FILE     make the relay running with FILE reload its configuration (as SIGHUP does);
                             exit 1 with the error if the new configuration does not validate
  sluice apikey  create|list|revoke ...   manage HTTP API keys
  sluice send    --url URL --key KEY --from A --to B ...   send via the HTTP API
  sluice suppression list|add|remove ...   manage the tenant's suppression list via the HTTP API
  sluice queue   [list|show|retry|flush|bounce|cancel|hold|release|pause|resume ...]   see and steer the
                 delivery queues via the HTTP API (admin key); no subcommand: a mailq-style listing
  sluice tlsrpt report|send [--day D] ...   see a day's SMTP TLS reports (RFC 8460), or send them now,
                 via the HTTP API (admin key)
  sluice passwd  USER [--tenant T] [--sender D]...   hash a password into a users file line (SMTP AUTH)
  sluice token   keygen|issue ...   make token signing keys; sign a short-lived token locally
  sluice dkim    keygen --domain D --selector S [--algo rsa|ed25519] [--out DIR]   make a DKIM key; print its TXT record
  sluice test    -c FILE [--from A] [--to B]... [FILE.eml]   dry-run a message through the pipeline
                             and print each stage's verdict, the routes and the reply (nothing is spooled)
  sluice test    -c FILE --route ADDRESS   where would mail to ADDRESS go?
  sluice test-scripts DIR    run the Lua rule tests (*_test.lua) under DIR
  sluice health  [-c FILE | --url URL] [--ready]   ask the running relay's admin listener /healthz (or /readyz)
  sluice domain  add|show|verify|list|remove|rotate ...   manage the tenant's sending domains via the HTTP API;
                 rotate their DKIM keys
  sluice dns     records|check|apply DOMAIN [-c FILE] ...   the DNS records a sending domain needs; check them;
                 write them to your DNS server (RFC 2136 + TSIG)
  sluice version [--json]    print the version, commit and Go version

Run "sluice COMMAND -h" for a command's flags. Exit codes: 0 ok, 1 failure, 2 usage.
`

// serveSignals receives the signals `serve` handles. They are caught in
// init, as early as the program can: a SIGHUP during start-up must not
// kill the relay (Go's default for an uncaught SIGHUP).
var serveSignals = make(chan os.Signal, 1)

func init() {
	if len(os.Args) > 1 && os.Args[1] == "serve" {
		signal.Notify(serveSignals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return runServe(args[1:], stderr)
	case "check":
		return runCheck(args[1:], stdout, stderr)
	case "reload":
		return runReload(args[1:], stdout, stderr)
	case "apikey":
		return runAPIKey(args[1:], stdout, stderr)
	case "send":
		return runSend(args[1:], stdout, stderr)
	case "suppression":
		return runSuppression(args[1:], stdout, stderr)
	case "queue":
		return runQueue(args[1:], stdout, stderr)
	case "tlsrpt":
		return runTLSRPT(args[1:], stdout, stderr)
	case "passwd":
		return runPasswd(args[1:], stdout, stderr)
	case "token":
		return runToken(args[1:], stdout, stderr)
	case "domain":
		return runDomain(args[1:], stdout, stderr)
	case "dns":
		return runDNS(args[1:], stdout, stderr)
	case "dkim":
		return runDKIM(args[1:], stdout, stderr)
	case "version", "--version", "-v":
		return runVersion(args[1:], stdout, stderr)
	case "test":
		return runTest(args[1:], stdout, stderr)
	case "test-scripts":
		return runTestScripts(args[1:], stdout, stderr)
	case "health":
		return runHealth(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "sluice: unknown command %q\n\n%s", args[0], usage)
	return 2
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	// The inner handler takes every level: the logx wrapper decides, per
	// subsystem (sluice.logging).
	opts := &slog.HandlerOptions{Level: slog.LevelDebug}
	var h slog.Handler
	switch format {
	case "text":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", format)
	}
	h, _ = logx.NewHandler(h, lv)
	return slog.New(h), nil
}

// startCapture creates path and starts a capture into it (a CPU profile
// or an execution trace); the function it returns stops the capture and
// closes the file.
func startCapture(path string, start func(io.Writer) error, stop func()) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := start(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { stop(); f.Close() }, nil
}

func runServe(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("c", "pipeline.lua", "configuration file")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error (wins over sluice.logging's level)")
	grace := fs.Duration("shutdown-grace", 30*time.Second, "how long to let sessions and deliveries finish on SIGTERM")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile to this file until shutdown (for performance work)")
	traceFile := fs.String("trace", "", "write an execution trace (go tool trace) to this file until shutdown (for latency work; large: tens of MB per second under load)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	sig := serveSignals
	defer signal.Stop(sig)
	log, err := newLogger(stderr, *logFormat, *logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "sluice serve:", err)
		return 2
	}
	slog.SetDefault(log)
	if limit, cg := memlimit.Set(); limit > 0 {
		log.Info("Go soft memory limit set from the cgroup memory limit (set GOMEMLIMIT to choose another)", "limit_bytes", limit, "cgroup_limit_bytes", cg)
	}
	// At least 64 MiB allocated between two collections while the live
	// heap is small (memlimit.Floor; GOGC set in the environment wins).
	if stopFloor, ok := memlimit.Floor(memlimit.DefaultGCFloor); ok {
		defer stopFloor()
		log.Debug("GC floor on (set GOGC to turn it off)", "floor_bytes", memlimit.DefaultGCFloor)
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, "sluice serve:", err)
		return 1
	}
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "log-level" {
			logx.Of(log).Pin() // the command line wins over sluice.logging's level
		}
	})
	cfg.ApplyLogging(log)
	// Validate (the same checks as `sluice check`) before anything is
	// created on disk.
	srv, err := server.New(cfg, log)
	if err != nil {
		fmt.Fprintln(stderr, "sluice serve:", err)
		return 1
	}
	if err := server.EnsureDirs(cfg); err != nil {
		fmt.Fprintln(stderr, "sluice serve:", err)
		return 1
	}
	for _, c := range []struct {
		path  string
		start func(io.Writer) error
		stop  func()
	}{{*cpuProfile, pprof.StartCPUProfile, pprof.StopCPUProfile}, {*traceFile, trace.Start, trace.Stop}} {
		if c.path == "" {
			continue
		}
		stop, err := startCapture(c.path, c.start, c.stop)
		if err != nil {
			fmt.Fprintln(stderr, "sluice serve:", err)
			return 1
		}
		defer stop()
	}
	if err := srv.Start(); err != nil {
		fmt.Fprintln(stderr, "sluice serve:", err)
		return 1
	}
	log.Info("sluice started", "version", version, "commit", versionInfo().Commit, "config", cfg.File, "node", cfg.Node, "stages", len(cfg.Stages))

	code := 0
wait:
	for {
		select {
		case s := <-sig:
			if s == syscall.SIGHUP {
				// Reload the pipeline and reopen the events file; a
				// configuration that does not validate leaves the running
				// one serving (Reload logs why).
				log.Info("SIGHUP: reloading", "config", cfg.File)
				_, _ = srv.Reload() // it logs the outcome
				continue
			}
			log.Info("shutting down", "signal", s.String(), "grace", grace.String())
			break wait
		case err := <-srv.Errors():
			log.Error("listener failed; shutting down", "err", err)
			code = 1
			break wait
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *grace)
	defer cancel()
	if err := srv.Stop(ctx); err != nil {
		log.Error("shutdown", "err", err)
		code = 1
	}
	log.Info("stopped")
	return code
}

func runCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("c", "pipeline.lua", "configuration file")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if err := server.Validate(cfg, log); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	// What loads but is not applied (serve logs the same at start), so an
	// operator sees it before deploying; not an error: exit 0.
	var warnings []string
	if cfg.Shaping != nil && cfg.Shaping.Rules != nil {
		warnings = cfg.Shaping.Rules.Warnings
	}
	if w := cfg.Delivery.DANEWarning(); w != "" {
		warnings = append(warnings, w)
	}
	for _, w := range warnings {
		fmt.Fprintln(stderr, "warning:", w)
	}
	fmt.Fprintf(stdout, "%s: ok (%d SMTP listener(s), %d HTTP listener(s), %d stage(s))", cfg.File, len(cfg.SMTP), len(cfg.HTTP), len(cfg.Stages))
	if len(warnings) > 0 {
		fmt.Fprintf(stdout, ", %d warning(s)", len(warnings))
	}
	fmt.Fprintln(stdout)
	return 0
}

func runReload(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("reload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("c", "pipeline.lua", "configuration file of the running relay (its spool path names the control socket)")
	socket := fs.String("socket", "", "control socket of the running relay (default: the spool path of -c FILE + \".sock\"); "+
		"use it when FILE cannot be evaluated here (its secrets live only in the relay's environment)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	path := *socket
	if path == "" {
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			fmt.Fprintln(stderr, "sluice reload:", err)
			fmt.Fprintln(stderr, "sluice reload: to reach the relay without evaluating the file here, give its control socket: sluice reload -socket PATH")
			return 1
		}
		path = server.ControlSocket(cfg)
	}
	summary, err := server.RequestReload(path)
	if err != nil {
		fmt.Fprintln(stderr, "sluice reload:", err)
		return 1
	}
	fmt.Fprintln(stdout, summary)
	return 0
}
