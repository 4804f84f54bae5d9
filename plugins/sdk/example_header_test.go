package sdk_test

import (
	"context"
	"fmt"

	"github.com/sluice-mta/sluice/pipeline"
	stagev1 "github.com/sluice-mta/sluice/plugins/proto/stage/v1"
	"github.com/sluice-mta/sluice/plugins/sdk"
)

// stamp inspects two header fields by name and adds one: the header is
// left unparsed (sdk.HeaderReader) and read with msg.HeaderValue.
type stamp struct{}

func (stamp) Name() string         { return "stamp" }
func (stamp) Body() sdk.Body       { return sdk.Headers }
func (stamp) UnparsedHeader() bool { return true }

func (stamp) OnMessage(ctx context.Context, msg *pipeline.Message) (pipeline.Verdict, error) {
	var v pipeline.Verdict
	if msg.HeaderValue("X-Spam-Score") != "" {
		return v, nil
	}
	v.Edits.AddHeader("X-Stamp", "checked: "+msg.HeaderValue("subject"))
	return v, nil
}

// A stage that reads header fields by name need not have the header
// parsed: HeaderValue answers as msg.Header.Get would, from the block.
func ExampleHeaderReader() {
	srv := sdk.NewServer(stamp{})
	v, _ := srv.OnMessage(context.Background(), &stagev1.MessageRequest{Message: &stagev1.Message{
		Txn: &stagev1.Txn{}, HasHeader: true,
		HeaderBlock: []byte("From: a@x.example\r\nSubject: quarterly\r\n report\r\n\r\n")}})
	h := v.Edits.Headers[0]
	fmt.Println(h.Name, h.Value)
	// Output:
	// X-Stamp checked: quarterly report
}
