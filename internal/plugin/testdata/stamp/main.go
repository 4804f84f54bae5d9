// Command stamp is the benchmark plugin of the performance target:
// it asks for the header only, inspects it at on_message (the Subject and
// whether an X-Spam-Score is present, read with msg.HeaderValue from the
// header left unparsed: sdk.HeaderReader) and adds one header field.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
	"github.com/sluice-mta/sluice/plugins/sdk"
)

// stage: parsed (STAMP_PARSED, for comparisons) has the SDK parse the
// header into msg.Header, as a plugin without UnparsedHeader gets it.
type stage struct{ parsed bool }

func (stage) Name() string                            { return "stamp" }
func (stage) Version() string                         { return fmt.Sprintf("0.1 (GOMAXPROCS %d)", runtime.GOMAXPROCS(0)) }
func (stage) Configure(string, json.RawMessage) error { return nil }
func (stage) Body() sdk.Body                          { return sdk.Headers }

// UnparsedHeader: the hook reads two fields by name (msg.HeaderValue), so
// the header need not be parsed.
func (s stage) UnparsedHeader() bool { return !s.parsed }

func (stage) OnMessage(ctx context.Context, msg *pipeline.Message) (pipeline.Verdict, error) {
	var v pipeline.Verdict
	if msg.HeaderValue("X-Spam-Score") != "" {
		return v, nil
	}
	s := "checked"
	if msg.HeaderValue("Subject") == "" {
		s = "no-subject"
	}
	v.Edits.AddHeader("X-Stamp", s)
	return v, nil
}

func main() {
	// STAMP_CPUPROFILE=FILE,SECONDS profiles the plugin for that long, or
	// until Sluice stops it (to see the plugin side of a benchmark).
	if v := os.Getenv("STAMP_CPUPROFILE"); v != "" {
		file, secs, _ := strings.Cut(v, ",")
		n, _ := strconv.Atoi(secs)
		f, err := os.Create(file)
		if err == nil && pprof.StartCPUProfile(f) == nil {
			var once sync.Once
			stop := func() { once.Do(func() { pprof.StopCPUProfile(); f.Close() }) }
			time.AfterFunc(time.Duration(n)*time.Second, stop)
			defer stop()
		}
	}
	var opts []sdk.Option
	if os.Getenv("STAMP_UNARY") != "" { // serve unary calls only (protocol 1.0 behaviour)
		opts = append(opts, sdk.WithoutStreaming())
	}
	if os.Getenv("STAMP_FIELDS") != "" { // the header as fields (protocol 1.1 behaviour)
		opts = append(opts, sdk.WithHeaderFields())
	}
	// The hook returns in microseconds and never waits: run on the
	// stream's receiving goroutine, unless STAMP_WORKERS (for comparisons)
	// asks for the SDK's default of a worker per call in flight.
	if os.Getenv("STAMP_WORKERS") == "" {
		opts = append(opts, sdk.WithInlineCalls())
	}
	if os.Getenv("STAMP_GOPROCS") != "" { // Go's GOMAXPROCS, not the SDK's default of 1
		opts = append(opts, sdk.WithMaxProcs(0))
	}
	sdk.Serve(stage{parsed: os.Getenv("STAMP_PARSED") != ""}, opts...)
}
