package spool

import (
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// TestScanMetaNamingAnotherID: a message whose metadata record names
// another id than its key (a spool edited by hand) is scanned under its
// key's id, by ScanQueued as by ScanRecipients: the queue reads the
// message's recipients back by that id before an attempt, and the
// metadata's would find none (the recipients dropped as missing). Two
// such messages naming the same id stay two messages.
func TestScanMetaNamingAnotherID(t *testing.T) {
	sp, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	k1, k2 := sp.NewID(), sp.NewID()
	for _, k := range []string{k1, k2} {
		if err := sp.db.Set(metaKey(k), []byte(`{"id":"SAME","sender":"s@a.test","received":"2026-01-02T03:04:05Z"}`), pebble.Sync); err != nil {
			t.Fatal(err)
		}
		if err := sp.db.Set(rcptKey(k, 0), []byte(`{"addr":"r@b.test","domain":"b.test","route":{"kind":"mx"}}`), pebble.Sync); err != nil {
			t.Fatal(err)
		}
	}
	for name, scan := range map[string]func(func(*Meta, *Recipient) error) error{"full": sp.ScanRecipients, "brief": sp.ScanQueued} {
		var got []string
		if err := scan(func(m *Meta, r *Recipient) error {
			if m.ID != r.MsgID {
				t.Errorf("%s: metadata id %q for a recipient of %q", name, m.ID, r.MsgID)
			}
			got = append(got, m.ID)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[0] != k1 || got[1] != k2 {
			t.Errorf("%s: scanned under %v, want [%s %s]", name, got, k1, k2)
		}
	}
}
