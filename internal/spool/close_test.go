package spool

import (
	"errors"
	"testing"
)

// TestWriteAfterClose: a consumer that saves its cursor after the spool
// was closed gets an error, not Pebble's "pebble: closed" panic (an
// event exporter racing shutdown crashed the process this way).
func TestWriteAfterClose(t *testing.T) {
	s := open(t, t.TempDir())
	if err := s.SetCursor("c", 1); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.SetCursor("c", 2); !errors.Is(err, errClosed) {
		t.Fatalf("SetCursor after Close = %v, want errClosed", err)
	}
}
