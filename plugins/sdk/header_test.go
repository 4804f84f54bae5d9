package sdk

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/pipeline"
	stagev1 "github.com/sluice-mta/sluice/plugins/proto/stage/v1"
)

// headerEcho answers with what it read of the header: whether it came
// unparsed, the first Subject and every X-Dup, through HeaderValue, and
// (when full) the parsed header's count of fields after ParseHeader.
type headerEcho struct {
	unparsed bool
	full     bool
}

func (headerEcho) Name() string           { return "echo" }
func (h headerEcho) UnparsedHeader() bool { return h.unparsed }
func (headerEcho) Body() Body             { return Headers }
func (h headerEcho) OnMessage(_ context.Context, msg *pipeline.Message) (pipeline.Verdict, error) {
	var v pipeline.Verdict
	v.Edits.AddHeader("X-Unparsed", fmt.Sprint(msg.HeaderUnparsed()))
	v.Edits.AddHeader("X-Subject", msg.HeaderValue("subject"))
	v.Edits.AddHeader("X-Dups", strings.Join(msg.HeaderValues("X-DUP"), "|"))
	if h.full {
		msg.ParseHeader()
		v.Edits.AddHeader("X-Fields", fmt.Sprint(msg.Header.Len(), " ", msg.Header.Get("Subject")))
	}
	return v, nil
}

func blockCall(id uint64, subject string) *stagev1.CallRequest {
	block := "X-Dup: a\r\nsUbJeCt: " + subject + "\r\n\tfolded\r\nx-dup: b\r\nSubject: second\r\n\r\n"
	return &stagev1.CallRequest{Id: id, Call: &stagev1.CallRequest_Message{Message: &stagev1.MessageRequest{
		Message: &stagev1.Message{Txn: &stagev1.Txn{}, HasHeader: true, HeaderBlock: []byte(block)}}}}
}

func edits(r *stagev1.CallResponse) map[string]string {
	out := map[string]string{}
	for _, h := range r.GetVerdict().GetEdits().GetHeaders() {
		out[h.Name] = h.Value
	}
	return out
}

// TestUnparsedHeader: a stage that says UnparsedHeader gets the header
// block unparsed and reads from it what a stage with the parsed header
// reads; ParseHeader gives it the full header. Many calls run at once on
// the Calls stream (run with -race: the blocks are read concurrently).
// A header sent as fields is parsed either way.
func TestUnparsedHeader(t *testing.T) {
	for _, st := range []headerEcho{{unparsed: true}, {unparsed: false}, {unparsed: true, full: true}} {
		// The options and codec Serve and Sluice use: the request is
		// decoded in place, the header block pointing into its buffer.
		c := dialWith(t, NewServer(st), serverOptions(), DialOptions())
		if _, err := c.Configure(context.Background(), &stagev1.ConfigureRequest{StageName: "echo", BatchAnswers: true}); err != nil {
			t.Fatal(err)
		}
		calls, err := c.Calls(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		const n = 100
		for id := uint64(1); id <= n; id++ {
			if err := calls.Send(blockCall(id, fmt.Sprint("s", id))); err != nil {
				t.Fatal(err)
			}
		}
		for seen := 0; seen < n; {
			r, err := calls.Recv()
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range append([]*stagev1.CallResponse{r}, r.More...) {
				seen++
				e := edits(a)
				want := map[string]string{"X-Unparsed": fmt.Sprint(st.unparsed),
					"X-Subject": fmt.Sprintf("s%d folded", a.Id), "X-Dups": "a|b"}
				if st.full {
					want["X-Fields"] = fmt.Sprintf("4 s%d folded", a.Id)
				}
				for k, w := range want {
					if e[k] != w {
						t.Errorf("stage %+v, call %d: %s = %q, want %q", st, a.Id, k, e[k], w)
					}
				}
			}
		}
		// The header as fields (an older Sluice): parsed for every stage.
		v, err := c.OnMessage(context.Background(), msgCall(1, "fields").GetMessage())
		if err != nil {
			t.Fatal(err)
		}
		if e := edits(&stagev1.CallResponse{Result: &stagev1.CallResponse_Verdict{Verdict: v}}); e["X-Unparsed"] != "false" || e["X-Subject"] != "fields" {
			t.Errorf("stage %+v, header as fields: %v", st, e)
		}
	}
}
