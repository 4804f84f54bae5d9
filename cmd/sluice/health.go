package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
)

const healthUsage = `Usage:
  sluice health [-c FILE | --url URL] [--ready] [--timeout 5s]
      ask the running relay's admin listener (sluice.listen_admin) whether it
      is alive (/healthz) or, with --ready, ready to take mail (/readyz); print
      its answer. For container health checks and monitoring scripts: the
      runtime image needs no curl.

Exit codes: 0 healthy (200), 1 not (another status, or no answer), 2 usage.
`

func runHealth(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("health", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, healthUsage); fs.PrintDefaults() }
	cfgPath := fs.String("c", "pipeline.lua", "configuration file (its sluice.listen_admin address is asked)")
	url := fs.String("url", "", "URL to ask instead, e.g. http://127.0.0.1:9101/healthz")
	ready := fs.Bool("ready", false, "ask /readyz (ready to take mail) instead of /healthz (alive)")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the answer")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	target := *url
	if target == "" {
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			fmt.Fprintln(stderr, "sluice health:", err)
			return 1
		}
		if cfg.Admin == nil {
			fmt.Fprintf(stderr, "sluice health: %s has no sluice.listen_admin { addr = ... }; give --url\n", cfg.File)
			return 1
		}
		target = "http://" + dialable(cfg.Admin.Addr) + "/healthz"
		if *ready {
			target = strings.TrimSuffix(target, "/healthz") + "/readyz"
		}
	} else if *ready {
		fmt.Fprintln(stderr, "sluice health: --ready goes with -c; with --url give the /readyz URL")
		return 2
	}
	c := &http.Client{Timeout: *timeout}
	resp, err := c.Get(target)
	if err != nil {
		fmt.Fprintln(stderr, "sluice health:", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	fmt.Fprintf(stdout, "%s: %s\n%s", target, resp.Status, body)
	if len(body) > 0 && body[len(body)-1] != '\n' {
		fmt.Fprintln(stdout)
	}
	if resp.StatusCode != http.StatusOK {
		return 1
	}
	return 0
}

// dialable turns a listening address into one to connect to: an
// unspecified host (":9101", "0.0.0.0:9101", "[::]:9101") becomes
// loopback.
func dialable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port)
}
