package plugin

import (
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"testing"
)

// TestPluginMaxProcs: a Go plugin runs with GOMAXPROCS 1 (sdk.DefaultMaxProcs)
// unless its author serves it WithMaxProcs (stamp's STAMP_GOPROCS: 0, Go's
// default) or the stage's env sets GOMAXPROCS, which wins over both. The
// stamp plugin reports its GOMAXPROCS in its version.
func TestPluginMaxProcs(t *testing.T) {
	goDefault := -1 // what Go picks for a process without GOMAXPROCS
	if os.Getenv("GOMAXPROCS") == "" {
		goDefault = runtime.GOMAXPROCS(0)
	}
	for _, c := range []struct {
		env  []string
		want int
	}{
		{[]string{"GOMAXPROCS="}, 1},
		{[]string{"GOMAXPROCS=3"}, 3},
		{[]string{"GOMAXPROCS=3", "STAMP_GOPROCS=1"}, 3},
		{[]string{"GOMAXPROCS=", "STAMP_GOPROCS=1"}, goDefault},
	} {
		if c.want < 0 {
			continue // this test runs under a GOMAXPROCS of its own
		}
		s, err := Start(Options{Name: "stamp", Cmd: stampBin, Env: c.env, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := s.Describe().Version, fmt.Sprintf("0.1 (GOMAXPROCS %d)", c.want); got != want {
			t.Errorf("env %q: version %q, want %q", c.env, got, want)
		}
		s.Close()
	}
}
