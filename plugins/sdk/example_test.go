package sdk_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/sluice-mta/sluice/pipeline"
	stagev1 "github.com/sluice-mta/sluice/plugins/proto/stage/v1"
	"github.com/sluice-mta/sluice/plugins/sdk"
)

// blocklist is a complete stage plugin: it refuses recipients of blocked
// domains at RCPT and tags every message. Its main would be:
//
//	func main() { sdk.Serve(&blocklist{}) }
type blocklist struct {
	blocked map[string]bool
}

func (b *blocklist) Name() string { return "blocklist" }

// Configure reads config = { domains = { ... } } (sdk.Configurer).
func (b *blocklist) Configure(stage string, raw json.RawMessage) error {
	var cfg struct {
		Domains []string `json:"domains"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return err
	}
	b.blocked = map[string]bool{}
	for _, d := range cfg.Domains {
		b.blocked[strings.ToLower(d)] = true
	}
	return nil
}

// Body: this stage needs no header or body (sdk.BodyNeeder).
func (b *blocklist) Body() sdk.Body { return sdk.Envelope }

// OnRcpt implements pipeline.RcptHook.
func (b *blocklist) OnRcpt(ctx context.Context, txn *pipeline.Txn, r *pipeline.Recipient) (pipeline.Verdict, error) {
	if b.blocked[r.Domain] {
		return pipeline.RejectVerdict(550, pipeline.EnhancedCode{5, 7, 1}, "Recipient domain blocked"), nil
	}
	return pipeline.Verdict{}, nil
}

// OnMessage implements pipeline.MessageHook.
func (b *blocklist) OnMessage(ctx context.Context, msg *pipeline.Message) (pipeline.Verdict, error) {
	var v pipeline.Verdict
	v.Edits.AddTag("blocklist-checked")
	return v, nil
}

// The plugin's main calls sdk.Serve(&blocklist{}); here the service is
// called directly, as Sluice would call it over gRPC.
func Example() {
	srv := sdk.NewServer(&blocklist{})
	ctx := context.Background()
	if _, err := srv.Configure(ctx, &stagev1.ConfigureRequest{StageName: "bl", ConfigJson: []byte(`{"domains":["bad.example"]}`)}); err != nil {
		panic(err)
	}
	d, _ := srv.Describe(ctx, &stagev1.DescribeRequest{})
	fmt.Println(d.Name, d.Hooks, d.Body)
	v, _ := srv.OnRcpt(ctx, &stagev1.RcptRequest{
		Txn:  &stagev1.Txn{Sender: "a@x.example"},
		Rcpt: &stagev1.Recipient{Address: "bob@bad.example", Local: "bob", Domain: "bad.example"},
	})
	fmt.Println(v.Action, v.Code, v.Enhanced, v.Text)
	// Output:
	// blocklist [HOOK_ON_RCPT HOOK_ON_MESSAGE] BODY_NEED_ENVELOPE
	// ACTION_REJECT 550 [5 7 1] Recipient domain blocked
}
