package spool

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/pipeline"
)

// With WALRecycling the spool keeps obsolete WAL files for reuse (Pebble's
// recycler) after the memtable rotates; without it none are kept
// (TestReclaimDelivered checks the default).
func TestWALRecyclingKeepsLogs(t *testing.T) {
	for _, recycle := range []bool{false, true} {
		s, err := Open(t.TempDir(), Options{Node: "n1", MinFree: -1, MemtableMB: 1, WALRecycling: recycle})
		if err != nil {
			t.Fatal(err)
		}
		body := bytes.Repeat([]byte("x"), 16<<10)
		for i := 0; i < 400; i++ { // 6.4 MB through a 1 MiB memtable
			id := s.NewID()
			b := s.NewBatch()
			_ = b.PutMessage(&Meta{ID: id, Sender: "a@x.test", Received: time.Now(), Size: len(body)}, body)
			_ = b.PutRecipient(&Recipient{MsgID: id, Idx: 0, Address: "r@y.test", Domain: "y.test", Route: pipeline.MX()})
			if err := b.Commit(true); err != nil {
				t.Fatal(err)
			}
			d := s.NewBatch()
			d.DeleteRecipient(id, 0)
			d.DeleteMessage(id)
			if err := d.Commit(false); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.Reclaim(context.Background(), true); err != nil {
			t.Fatal(err)
		}
		m := s.db.Metrics()
		if kept := m.WAL.ObsoleteFiles > 0; kept != recycle {
			t.Errorf("WALRecycling=%v: %d obsolete WAL files kept (%d bytes)", recycle, m.WAL.ObsoleteFiles, m.WAL.ObsoletePhysicalSize)
		}
		s.Close()
	}
}
