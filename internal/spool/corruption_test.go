package spool

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestDataCorruptionFailsSpool: a corrupt sstable found by a read fails
// the spool (Pebble's DataCorruption event is a Fatalf, as before the
// spool had an event listener of its own): writes are refused instead of
// going on over a damaged store.
func TestDataCorruptionFailsSpool(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{Node: "n1", MinFree: -1, MemtableMB: 4})
	if err != nil {
		t.Fatal(err)
	}
	ids := queueSome(t, s, 50)
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	levels, err := s.db.SSTables()
	if err != nil {
		t.Fatal(err)
	}
	var body string
	for _, tables := range levels {
		for _, tb := range tables {
			if k := tb.Smallest.UserKey; len(k) > 0 && k[0] == kBody {
				body = filepath.Join(dir, tb.FileNum.String()+".sst")
			}
		}
	}
	if body == "" {
		t.Fatal("no body table")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Damage the first data block (tables start with it).
	f, err := os.OpenFile(body, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0x5a}, 64), 16); err != nil {
		t.Fatal(err)
	}
	f.Close()

	s, err = Open(dir, Options{Node: "n1", MinFree: -1, MemtableMB: 4})
	if err != nil {
		t.Fatal(err)
	}
	// The read that finds the damage parks in Fatalf: read on a goroutine
	// of its own.
	go func() { _, _ = s.Body(ids[0]) }()
	deadline := time.Now().Add(10 * time.Second)
	for s.failed() == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if s.failed() == nil {
		t.Fatal("a corrupt table was read and the spool still takes writes")
	}
}
