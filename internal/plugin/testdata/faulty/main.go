// Command faulty is a stage plugin for the host's tests. Its first argument
// chooses how it behaves:
//
//	ok           serves on_rcpt (rejects reject@...) and on_message (adds
//	             X-Plugin-Pid, X-Config and X-Body-Len)
//	panic10      like ok, but panics on every 10th message
//	hang         on_message never returns (health still answers)
//	exit         exits with status 3 before the handshake
//	nohandshake  never prints the handshake
//	garbage      prints a line to stdout before the handshake
//	unavailable  every hook call returns gRPC status UNAVAILABLE "tenant
//	             database unreachable" (a live plugin whose backend is down)
//	children     like ok, but first starts "sleep 1000" and writes its pid
//	             to the file named by $FAULTY_CHILD_FILE
//	stderrexit   writes 300 numbered lines to stderr, then exits 4
//	longline     writes one 100 KiB line and 1000 short lines to stderr, then
//	             serves like ok
//	panicstart   starts 40 goroutines, then panics before the handshake (with
//	             GODEBUG's schedtrace, the runtime prints its scheduler state
//	             first: a line per goroutine)
//	schedlike    like ok, but on_message first writes to os.Stderr two lines
//	             of its own that look like the runtime's scheduler trace
//	godebug      like ok, and reports the GODEBUG that processes it starts
//	             get as X-Godebug ("unset" or "set:VALUE")
//
// With FAULTY_UNARY set in its environment it serves unary calls only
// (sdk.WithoutStreaming); with FAULTY_INLINE it runs stream calls on the
// receiving goroutine (sdk.WithInlineCalls); with FAULTY_FIELDS, it takes the header as one
// entry per field (sdk.WithHeaderFields, as a protocol 1.1 plugin). "ok"
// reports the header it received as X-Header-Len (its length, written out)
// and X-Header-Fields (the number of fields).
//
// In every mode, a message with the header X-Wait-File: PATH makes
// on_message create PATH.started and wait until PATH exists.
//
// "ok" reports whether the message carries REQUIRETLS as X-RequireTLS-Seen
// ("true" or "false"), and a header X-Set-RequireTLS: true or false makes
// on_message set or clear it (protocol 1.4).
//
// The config key "body" ("envelope", "headers", "full") sets the body need;
// "fail" makes Configure fail.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-message/textproto"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluice-mta/sluice/pipeline"
	"github.com/sluice-mta/sluice/plugins/sdk"
)

type stage struct {
	mode string
	n    atomic.Int64
	cfg  struct {
		Body string `json:"body"`
		Tag  string `json:"tag"`
		Fail bool   `json:"fail"`
	}
}

func (s *stage) Name() string    { return "faulty" }
func (s *stage) Version() string { return "0.1" }

func (s *stage) Configure(name string, raw json.RawMessage) error {
	if err := json.Unmarshal(raw, &s.cfg); err != nil {
		return err
	}
	if s.cfg.Fail {
		return errors.New("config says fail")
	}
	return nil
}

func (s *stage) Body() sdk.Body {
	switch s.cfg.Body {
	case "envelope":
		return sdk.Envelope
	case "headers":
		return sdk.Headers
	}
	return sdk.Full
}

func (s *stage) OnRcpt(ctx context.Context, txn *pipeline.Txn, r *pipeline.Recipient) (pipeline.Verdict, error) {
	if r.Local == "reject" {
		return pipeline.RejectVerdict(554, pipeline.EnhancedCode{5, 7, 9}, "no thanks"), nil
	}
	return pipeline.Verdict{}, nil
}

func (s *stage) OnMessage(ctx context.Context, msg *pipeline.Message) (pipeline.Verdict, error) {
	n := s.n.Add(1)
	switch s.mode {
	case "panic10":
		if n%10 == 0 {
			panic(fmt.Sprintf("message %d", n))
		}
	case "hang":
		for {
			time.Sleep(time.Hour)
		}
	case "schedlike":
		fmt.Fprintln(os.Stderr, "SCHED 5ms: gomaxprocs=1 is what the plugin counted")
		fmt.Fprintln(os.Stderr, "  P0: the plugin's own line")
	}
	if f := msg.Header.Get("X-Wait-File"); f != "" {
		if err := os.WriteFile(f+".started", []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			return pipeline.Verdict{}, err
		}
		for {
			if _, err := os.Stat(f); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if msg.Header.Get("X-Fail") != "" {
		return pipeline.Verdict{}, errors.New("asked to fail")
	}
	var v pipeline.Verdict
	v.Edits.AddHeader("X-Plugin-Pid", strconv.Itoa(os.Getpid()))
	v.Edits.AddHeader("X-Config", s.cfg.Tag)
	v.Edits.AddHeader("X-Env", os.Getenv("FAULTY_ENV"))
	if s.mode == "godebug" {
		g, ok := os.LookupEnv("GODEBUG")
		if !ok {
			g = "unset"
		} else {
			g = "set:" + g
		}
		v.Edits.AddHeader("X-Godebug", g)
	}
	v.Edits.AddHeader("X-Body-Len", strconv.Itoa(len(msg.Body)))
	v.Edits.AddHeader("X-Subject-Seen", strings.ToUpper(msg.Header.Get("Subject")))
	var hb bytes.Buffer
	if err := textproto.WriteHeader(&hb, msg.Header); err != nil {
		return pipeline.Verdict{}, err
	}
	v.Edits.AddHeader("X-Header-Len", strconv.Itoa(hb.Len()))
	v.Edits.AddHeader("X-Header-Fields", strconv.Itoa(msg.Header.Len()))
	v.Edits.AddHeader("X-RequireTLS-Seen", strconv.FormatBool(msg.Txn.Params.RequireTLS))
	if set := msg.Header.Get("X-Set-RequireTLS"); set != "" {
		on, err := strconv.ParseBool(set)
		if err != nil {
			return pipeline.Verdict{}, err
		}
		v.Edits.SetRequireTLS(on)
	}
	if s.cfg.Tag != "" {
		fmt.Fprintf(os.Stderr, "scored message %s\n", msg.ID)
	}
	return v, nil
}

func main() {
	mode := "ok"
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	switch mode {
	case "exit":
		fmt.Fprintln(os.Stderr, "exiting at start")
		os.Exit(3)
	case "nohandshake":
		for {
			time.Sleep(time.Hour)
		}
	case "garbage":
		fmt.Println("hello, this is not a handshake")
	case "stderrexit":
		for i := 1; i <= 300; i++ {
			fmt.Fprintf(os.Stderr, "stderr line %d\n", i)
		}
		fmt.Fprintln(os.Stderr, "fatal: cannot open /etc/faulty.conf")
		os.Exit(4)
	case "panicstart":
		block := make(chan struct{})
		for i := 0; i < 40; i++ {
			go func() { <-block }()
		}
		time.Sleep(10 * time.Millisecond) // let them park
		panic("cannot start")
	case "longline":
		os.Stderr.WriteString(strings.Repeat("L", 100<<10) + "\n")
		for i := 1; i <= 1000; i++ {
			fmt.Fprintf(os.Stderr, "short line %d\n", i)
		}
	case "children":
		child := exec.Command("sleep", "1000")
		if err := child.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if err := os.WriteFile(os.Getenv("FAULTY_CHILD_FILE"), []byte(strconv.Itoa(child.Process.Pid)), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	case "unavailable":
		serveUnavailable(&stage{mode: mode})
		return
	}
	var opts []sdk.Option
	if os.Getenv("FAULTY_UNARY") != "" { // serve unary calls only (protocol 1.0 behaviour)
		opts = append(opts, sdk.WithoutStreaming())
	}
	if os.Getenv("FAULTY_INLINE") != "" { // stream calls on the receiving goroutine
		opts = append(opts, sdk.WithInlineCalls())
	}
	if os.Getenv("FAULTY_FIELDS") != "" { // the header as fields (protocol 1.1 behaviour)
		opts = append(opts, sdk.WithHeaderFields())
	}
	sdk.Serve(&stage{mode: mode}, opts...)
}

// serveUnavailable serves like sdk.Serve, but every hook call (any unary
// call but Configure, Describe and Health) fails with UNAVAILABLE, as a
// plugin in another language does when its database is down. (The Go
// SDK turns a hook's error into UNKNOWN, so this takes an interceptor.)
func serveUnavailable(st *stage) {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: sdk.Handshake,
		// Unary calls only, as a plugin in another language without the
		// Calls stream (the interceptor sees unary calls only).
		Plugins: plugin.PluginSet{sdk.PluginName: &sdk.GRPCPlugin{Impl: sdk.NewServer(st, sdk.WithoutStreaming())}},
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			return grpc.NewServer(append(opts, grpc.UnaryInterceptor(
				func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
					switch path.Base(info.FullMethod) {
					case "Configure", "Describe", "Health":
						return h(ctx, req)
					}
					return nil, status.Error(codes.Unavailable, "tenant database unreachable")
				}))...)
		},
	})
}
