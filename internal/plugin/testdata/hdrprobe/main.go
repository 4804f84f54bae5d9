// Command hdrprobe is a test plugin (TestHeaderProbe): it reads the header
// left unparsed (sdk.HeaderReader) with msg.HeaderValue and HeaderValues,
// from several goroutines at once, and checks every answer against the
// parsed path (ParseMessage's Header.Get and Values over the same header
// bytes) for every field name of the message in several spellings. It
// reports in header edits: X-Probe-Mismatches (how many answers
// differed; X-Probe-First: the first), X-Probe-Unparsed (whether the
// header came unparsed) and X-Probe-Mix (whether a field the hook adds to
// msg.Header before parsing reads back as added, on top of the received
// ones). PROBE_PARSED=1 in its env has the SDK parse the header instead.
package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/sluice-mta/sluice/pipeline"
	"github.com/sluice-mta/sluice/plugins/sdk"
)

type probe struct{}

func (probe) Name() string         { return "hdrprobe" }
func (probe) Body() sdk.Body       { return sdk.Headers }
func (probe) UnparsedHeader() bool { return os.Getenv("PROBE_PARSED") == "" }

func (probe) OnMessage(ctx context.Context, msg *pipeline.Message) (pipeline.Verdict, error) {
	var v pipeline.Verdict
	unparsed := msg.HeaderUnparsed()
	hb, err := msg.HeaderBytes()
	if err != nil {
		return v, err
	}
	pm, err := pipeline.ParseMessage(nil, hb)
	if err != nil {
		return v, err
	}
	keys := []string{"Subject", "From", "DKIM-Signature", "X-Dup", "Received", "X-Missing", ""}
	for f := pm.Header.Fields(); f.Next(); {
		keys = append(keys, f.Key())
	}
	slices.Sort(keys)
	keys = slices.Compact(keys)
	var (
		wg         sync.WaitGroup
		mu         sync.Mutex
		mismatches []string
	)
	for _, k := range keys {
		for _, kk := range []string{k, strings.ToLower(k), strings.ToUpper(k), k + " "} {
			wg.Add(1)
			go func() { // lookups of one message from several goroutines
				defer wg.Done()
				g, w := msg.HeaderValue(kk), pm.Header.Get(kk)
				gs, ws := msg.HeaderValues(kk), pm.Header.Values(kk)
				if g != w || !slices.Equal(gs, ws) {
					mu.Lock()
					mismatches = append(mismatches, fmt.Sprintf("%q: got %q %q, want %q %q", kk, g, gs, w, ws))
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	v.Edits.AddHeader("X-Probe-Mismatches", strconv.Itoa(len(mismatches)))
	if len(mismatches) > 0 {
		v.Edits.AddHeader("X-Probe-First", strings.NewReplacer("\r", `\r`, "\n", `\n`).Replace(mismatches[0]))
	}
	v.Edits.AddHeader("X-Probe-Unparsed", strconv.FormatBool(unparsed))

	want := append([]string{" local "}, pm.Header.Values("X-Dup")...)
	msg.Header.Add("X-Dup", " local ")
	v.Edits.AddHeader("X-Probe-Mix", strconv.FormatBool(slices.Equal(msg.HeaderValues("X-Dup"), want) &&
		msg.HeaderValue("Subject") == pm.Header.Get("Subject")))
	return v, nil
}

func main() { sdk.Serve(probe{}) }
