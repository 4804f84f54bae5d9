// Command sluice-bench is an end-to-end benchmark for SMTP relays (any relay,
// not only Sluice) and for Sluice's HTTP submission API.
//
//	sluice-bench smtp -target 127.0.0.1:2525 -sink 127.0.0.1:2602 -n 5000 -c 20 -size 2048
//	sluice-bench http -target http://127.0.0.1:8025 -key KEY -n 20000 -c 64 -size 2048 [-batch N] [-rate R]
//	sluice-bench sink -listen 127.0.0.1:2602
//
// smtp and http start a counting SMTP sink (unless -sink ""), drive load at the
// target, then wait until the sink has every accepted message. They exit 0 if
// every message was accepted and reached the sink, 1 if not (the report is still
// printed), 2 on a usage or setup error.
//
// http -rate R makes the run open-loop: R requests per second over all
// clients, each request's latency measured from its scheduled send time, so a
// stall in the server is counted in every request it delays (no coordinated
// omission). Without -rate the run is closed-loop: each client sends its next
// request when the last is answered, which saturates the server, and latency
// is measured from the send.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sluice-mta/sluice/internal/loadgen"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage:
  sluice-bench smtp [flags]   SMTP load at a relay, counting sink, report
  sluice-bench http [flags]   HTTP API load (POST /v1/messages[/batch]), counting sink, report
  sluice-bench sink [flags]   run only the counting sink, print count per second
Run "sluice-bench <command> -h" for the flags of a command.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "smtp":
		return runSMTP(ctx, args[1:], stdout, stderr)
	case "http":
		return runHTTP(ctx, args[1:], stdout, stderr)
	case "sink":
		return runSink(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "sluice-bench: unknown command %q\n%s", args[0], usage)
		return 2
	}
}

type common struct {
	sink, sinkImpl string
	timeout        time.Duration
	asJSON         bool
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.sink, "sink", "127.0.0.1:2602", `address for the counting SMTP sink the relay delivers to ("" = no sink, no end-to-end figures)`)
	fs.StringVar(&c.sinkImpl, "sink-impl", loadgen.SinkRaw, `sink implementation: "raw" (fast, line-based) or "go-smtp" (emersion/go-smtp server; costs more CPU per byte)`)
	fs.DurationVar(&c.timeout, "timeout", 120*time.Second, "limit for the whole run: sending plus waiting for the sink")
	fs.BoolVar(&c.asJSON, "json", false, "print the report as one JSON line instead of text")
}

// parse parses a subcommand's flags; it returns -1 to go on, or the exit
// code.
func (c *common) parse(fs *flag.FlagSet, args []string, stderr io.Writer) int {
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "sluice-bench %s: unexpected arguments %q\n", fs.Name(), fs.Args())
		return 2
	}
	return -1
}

func (c *common) runConfig() loadgen.RunConfig {
	return loadgen.RunConfig{Sink: loadgen.SinkConfig{Addr: c.sink, Impl: c.sinkImpl}, Timeout: c.timeout}
}

func finish(rep *loadgen.Report, err error, c *common, stdout, stderr io.Writer) int {
	if rep == nil {
		fmt.Fprintf(stderr, "sluice-bench: %v\n", err)
		return 2
	}
	if c.asJSON {
		_ = rep.WriteJSON(stdout)
	} else {
		rep.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "sluice-bench: %v\n", err)
		if errors.Is(err, loadgen.ErrRunFailed) {
			return 1
		}
		return 2
	}
	return 0
}

func parseExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}

func runSMTP(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("smtp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c common
	var cfg loadgen.SMTPConfig
	c.register(fs)
	fs.StringVar(&cfg.Target, "target", "127.0.0.1:2525", "SMTP relay under test (host:port)")
	fs.IntVar(&cfg.N, "n", 5000, "messages in total")
	fs.IntVar(&cfg.C, "c", 20, "parallel SMTP sessions (each reuses its connection)")
	fs.IntVar(&cfg.Size, "size", 2048, "message size in bytes (headers + body)")
	fs.StringVar(&cfg.From, "from", "a@x.test", "envelope and header sender")
	fs.StringVar(&cfg.To, "to", "b@sink.test", "envelope and header recipient")
	fs.StringVar(&cfg.Helo, "helo", "sluice-bench.invalid", "EHLO name")
	fs.DurationVar(&cfg.IOTimeout, "io-timeout", 60*time.Second, "limit for one message exchange")
	fs.BoolVar(&cfg.NoPipelining, "no-pipelining", false, "do not pipeline MAIL/RCPT/DATA even if the server offers PIPELINING")
	if code := c.parse(fs, args, stderr); code >= 0 {
		return code
	}
	rep, err := loadgen.RunSMTP(ctx, cfg, c.runConfig())
	return finish(rep, err, &c, stdout, stderr)
}

func runHTTP(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("http", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c common
	var cfg loadgen.HTTPConfig
	c.register(fs)
	fs.StringVar(&cfg.Target, "target", "http://127.0.0.1:8025", "base URL of the HTTP API")
	fs.StringVar(&cfg.Key, "key", "", "API key, sent as Authorization: Bearer KEY")
	fs.IntVar(&cfg.N, "n", 20000, "messages in total")
	fs.IntVar(&cfg.C, "c", 64, "concurrent keep-alive clients")
	fs.IntVar(&cfg.Size, "size", 2048, `bytes of "text" per message`)
	fs.IntVar(&cfg.Batch, "batch", 0, "0: POST /v1/messages, one message per request; N: POST /v1/messages/batch with N messages per request")
	fs.StringVar(&cfg.From, "from", "a@x.test", "sender")
	fs.StringVar(&cfg.To, "to", "b@sink.test", "recipient")
	fs.DurationVar(&cfg.IOTimeout, "io-timeout", 60*time.Second, "limit for one request")
	fs.StringVar(&cfg.LatencyLog, "latency-log", "", "write one line per accepted request to this file: its start (scheduled time with -rate, else send time) in Unix nanoseconds and its latency in microseconds")
	fs.Float64Var(&cfg.Rate, "rate", 0, "open-loop: requests per second over all clients, latency from each request's scheduled send time (0 = closed-loop: next request when the last is answered)")
	if code := c.parse(fs, args, stderr); code >= 0 {
		return code
	}
	rep, err := loadgen.RunHTTP(ctx, cfg, c.runConfig())
	return finish(rep, err, &c, stdout, stderr)
}

func runSink(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sink", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:2602", "address to listen on")
	impl := fs.String("impl", loadgen.SinkRaw, `sink implementation: "raw" or "go-smtp"`)
	every := fs.Duration("every", time.Second, "print interval")
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	tr := loadgen.NewTracker("", 0)
	sink, err := loadgen.StartSink(*listen, *impl, tr)
	if err != nil {
		fmt.Fprintf(stderr, "sluice-bench: %v\n", err)
		return 2
	}
	defer sink.Close()
	fmt.Fprintf(stdout, "sink listening on %s (%s); Ctrl-C to stop\n", sink.Addr, *impl)
	tick := time.NewTicker(*every)
	defer tick.Stop()
	var last int64
	for {
		select {
		case <-ctx.Done():
			st := tr.Stats()
			fmt.Fprintf(stdout, "total %d messages, %d bytes\n", st.Total, st.Bytes)
			return 0
		case now := <-tick.C:
			st := tr.Stats()
			if st.Total != last {
				fmt.Fprintf(stdout, "%s total %d  +%d (%.0f msgs/s)\n", now.Format("15:04:05"),
					st.Total, st.Total-last, float64(st.Total-last)/every.Seconds())
				last = st.Total
			}
		}
	}
}
