package spool

import (
	"errors"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

// TestQueuedReadsBack: Queued and QueuedMany give back the metadata and
// the named recipients as stored, and ErrNotQueued for a message or a
// recipient the spool does not hold.
func TestQueuedReadsBack(t *testing.T) {
	sp, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	b := sp.NewBatch()
	var ids []string
	for i := 0; i < 1100; i++ { // more than one chunk of QueuedMany
		id := sp.NewID()
		ids = append(ids, id)
		_ = b.PutMessage(&Meta{ID: id, Sender: "s@a.test", Received: time.Now(), Tags: []string{"t"}}, []byte("x"))
		for j := 0; j < 3; j++ {
			_ = b.PutRecipient(&Recipient{MsgID: id, Idx: j, Address: "r@b.test", Domain: "b.test", Route: pipeline.MX(),
				Attempts: j, Params: pipeline.RcptParams{ORCPT: "rfc822;r@b.test"}})
		}
	}
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	m, rs, err := sp.Queued(ids[0], []uint16{2, 0})
	if err != nil || m.ID != ids[0] || m.Sender != "s@a.test" || len(m.Tags) != 1 || len(rs) != 2 ||
		rs[0].Idx != 2 || rs[0].Attempts != 2 || rs[1].Idx != 0 || rs[0].MsgID != ids[0] || rs[0].Params.ORCPT != "rfc822;r@b.test" {
		t.Fatalf("Queued = %+v, %+v, %v", m, rs, err)
	}
	if _, _, err := sp.Queued(ids[0], []uint16{7}); !errors.Is(err, ErrNotQueued) {
		t.Fatalf("missing recipient: %v", err)
	}
	if _, _, err := sp.Queued("01NOSUCHMESSAGE00000000000", []uint16{0}); !errors.Is(err, ErrNotQueued) {
		t.Fatalf("missing message: %v", err)
	}

	// Every other message, with one missing recipient and one missing id.
	var want []string
	var idxs [][]uint16
	for i := 0; i < len(ids); i += 2 {
		want = append(want, ids[i])
		idxs = append(idxs, []uint16{1})
	}
	idxs[5] = []uint16{1, 9}
	want = append(want, "7ZZZZZZZZZZZZZZZZZZZZZZZZZ") // after every ULID
	idxs = append(idxs, []uint16{0})
	got := 0
	err = sp.QueuedMany(want, idxs, func(i int, m *Meta, rs []*Recipient, err error) {
		if i != got {
			t.Fatalf("result %d, want %d", i, got)
		}
		got++
		switch i {
		case 5, len(want) - 1:
			if !errors.Is(err, ErrNotQueued) {
				t.Errorf("result %d: %v, want ErrNotQueued", i, err)
			}
		default:
			if err != nil || m.ID != want[i] || len(rs) != 1 || rs[0].Idx != 1 || rs[0].MsgID != want[i] || rs[0].Attempts != 1 {
				t.Errorf("result %d: %+v, %+v, %v", i, m, rs, err)
			}
		}
	})
	if err != nil || got != len(want) {
		t.Fatalf("QueuedMany: %d results, %v", got, err)
	}
}
