package main

import (
	"testing"

	"github.com/sluice-mta/sluice/internal/luatest"
)

// TestFailText: a file that did not load is named apart, not counted as
// a failed test (5 of 6 tests failed and a broken file printed "6 of 6").
func TestFailText(t *testing.T) {
	got := failText(luatest.Summary{Files: 2, Tests: 6, Failed: 6, Broken: 1})
	if want := "FAIL: 5 of 6 tests failed, 1 file(s) did not load in 2 file(s)"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	got = failText(luatest.Summary{Files: 1, Tests: 5, Failed: 3})
	if want := "FAIL: 3 of 5 tests failed in 1 file(s)"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
