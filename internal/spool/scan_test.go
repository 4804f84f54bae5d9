package spool

import (
	"testing"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

// TestScanRecipientsSkipsMissingMetadataAndShares: recipients whose
// message has no metadata are skipped (once each, the others still
// load), every recipient comes with its own message's metadata, and
// equal routes and replies are one value.
func TestScanRecipientsSkipsMissingMetadataAndShares(t *testing.T) {
	sp, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	b := sp.NewBatch()
	ids := []string{sp.NewID(), sp.NewID(), sp.NewID()}
	for i, id := range ids {
		if i != 1 { // the middle message lost its metadata
			_ = b.PutMessage(&Meta{ID: id, Sender: "s@a.test", Received: time.Now()}, []byte("x"))
		}
		for j := 0; j < 2; j++ {
			_ = b.PutRecipient(&Recipient{MsgID: id, Idx: j, Address: "r@b.test", Domain: "b.test",
				Route:     &pipeline.Route{Kind: pipeline.RouteRelay, Host: "10.0.0.1", Port: 25},
				LastReply: &pipeline.Response{Code: 451, Enhanced: "4.4.1", Text: "later"}})
		}
	}
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	var got []*Recipient
	err = sp.ScanRecipients(func(m *Meta, r *Recipient) error {
		if m.ID != r.MsgID {
			t.Errorf("recipient of %s handed out with the metadata of %s", r.MsgID, m.ID)
		}
		got = append(got, r)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || got[0].MsgID != ids[0] || got[3].MsgID != ids[2] || got[3].Idx != 1 {
		t.Fatalf("scanned %d recipients, want the 4 of the two messages with metadata", len(got))
	}
	for _, r := range got[1:] {
		if r.Route != got[0].Route || r.LastReply != got[0].LastReply {
			t.Fatal("equal routes or replies are separate values")
		}
	}
}
