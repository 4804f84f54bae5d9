package capture

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestLaggedStoreCrashStates models power failures at many moments of a
// lagged store whose memtable rotates and flushes often (1 MiB memtable,
// incompressible bodies), with some or all of the unsynced data kept
// (pages written back out of order). Every crash state must open, and
// hold: every capture committed before the last answered Delete (or
// another capture synced by the rotation of its log) that was not
// deleted, each with its exact bytes and searchable; no deleted capture;
// the kept captures a prefix of those committed (no hole in the log).
func TestLaggedStoreCrashStates(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 1))
	fs := vfs.NewCrashableMem()
	s := open(t, "sb", Options{FS: fs, SyncLag: time.Hour, MemtableMB: 1})
	defer s.Close()
	type put struct {
		id   string
		word string
		data []byte
	}
	var puts []put
	deleted := map[string]bool{}
	mustBefore := 0 // puts[:mustBefore] are synced (a Delete answered after them)
	crashes, lost := 0, 0
	n := 120 // 17 crash states
	if raceEnabled {
		n = 42 // 6 crash states, still several log rotations and flushes (about 4 minutes under -race with 120)
	}
	for i := 0; i < n; i++ {
		body := make([]byte, 60<<10+rng.IntN(60<<10))
		for k := range body {
			body[k] = byte(rng.Uint32())
		}
		word := fmt.Sprintf("word%dz", i)
		data := msg(fmt.Sprintf("m%d %s", i, word), "b@d.test", fmt.Sprintf("%s %x", word, body))
		sm, err := s.Put("acme", "", "a@s.test", []string{"b@d.test"}, data)
		if err != nil {
			t.Fatal(err)
		}
		puts = append(puts, put{sm.ID, word, data})
		if rng.IntN(10) == 0 {
			d := puts[rng.IntN(len(puts))]
			if !deleted[d.id] {
				if ok, err := s.Delete("acme", d.id); !ok || err != nil {
					t.Fatalf("delete %s: %v %v", d.id, ok, err)
				}
				deleted[d.id] = true
				mustBefore = len(puts)
			}
		}
		if i%7 != 3 {
			continue
		}
		crashes++
		pct := []int{0, 30, 70, 100}[rng.IntN(4)]
		c, err := Open("sb", Options{FS: fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: pct, RNG: rng}), SyncLag: -1, Logger: quiet()})
		if err != nil {
			t.Fatalf("crash after capture %d (unsynced data kept %d%%): the store does not open: %v", i, pct, err)
		}
		kept := 0
		for j, p := range puts {
			_, ok := c.Get("acme", p.id)
			switch {
			case deleted[p.id] && ok:
				t.Errorf("crash after capture %d (%d%%): deleted capture %d is back", i, pct, j)
			case deleted[p.id]:
			case !ok && j < mustBefore:
				t.Errorf("crash after capture %d (%d%%): capture %d, synced by a delete, is lost", i, pct, j)
			case ok && kept < j-countDeleted(puts[:j], deleted, func(q put) string { return q.id }):
				t.Errorf("crash after capture %d (%d%%): capture %d kept after a lost one", i, pct, j)
			}
			if !ok {
				if !deleted[p.id] {
					lost++
				}
				continue
			}
			kept++
			raw, found, err := c.Raw("acme", p.id)
			if err != nil || !found || !bytes.Equal(raw, p.data) {
				t.Errorf("crash after capture %d (%d%%): capture %d's bytes: found %v err %v equal %v", i, pct, j, found, err, bytes.Equal(raw, p.data))
			}
			pg, err := c.Search("acme", Filter{Text: p.word}, 0, 10)
			if err != nil || len(pg.Messages) != 1 || pg.Messages[0].ID != p.id {
				t.Errorf("crash after capture %d (%d%%): capture %d not found by its word: %v", i, pct, j, err)
			}
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if t.Failed() {
			return
		}
	}
	if lost == 0 {
		t.Fatal("no crash state lost an unsynced capture: this test shows nothing")
	}
	t.Logf("%d crash states checked, %d unsynced captures lost in them", crashes, lost)
}

// countDeleted counts the items of xs whose id is in deleted.
func countDeleted[T any](xs []T, deleted map[string]bool, id func(T) string) int {
	n := 0
	for _, x := range xs {
		if deleted[id(x)] {
			n++
		}
	}
	return n
}
