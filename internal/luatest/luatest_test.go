package luatest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFailuresNameFileAndLine: each failed assertion is reported with the
// file:line of the assertion and its message; a script error inside a
// hook is a verdict the test can check, not a failure; a runtime error in
// the test itself fails it with its own position.
func TestFailuresNameFileAndLine(t *testing.T) {
	var out strings.Builder
	sum, err := Run(context.Background(), []string{"testdata/failing"}, Options{Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	if sum != (Summary{Files: 1, Tests: 5, Failed: 3}) {
		t.Errorf("summary %+v, want 1 file, 5 tests, 3 failed\n%s", sum, out.String())
	}
	for _, want := range []string{
		"--- FAIL: test_wrong_code",
		"testdata/failing/policy_test.lua:11: the code of a blocked domain: got 550, want 451",
		`testdata/failing/policy_test.lua:15: got {1, 2, x = "y"}, want {1, 3, x = "y"}`,
		"testdata/failing/policy_test.lua:27: attempt to index a non-table object(nil) with key 'field'",
		"FAIL testdata/failing/policy_test.lua (3 of 5 tests failed",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
	for _, passed := range []string{"test_passes", "test_script_error_is_a_verdict"} {
		if strings.Contains(out.String(), passed) {
			t.Errorf("%s reported as failed:\n%s", passed, out.String())
		}
	}
}

// TestInlineStageOfAConfiguration: t.stage(config, name) tests an inline
// stage; relay control, meta and scratch edits and discard behave as in
// the chain.
func TestInlineStageOfAConfiguration(t *testing.T) {
	var out strings.Builder
	sum, err := Run(context.Background(), []string{"testdata/passing"}, Options{Out: &out, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Failed != 0 || sum.Tests != 5 {
		t.Errorf("summary %+v\n%s", sum, out.String())
	}
}

func TestRunFilterAndErrors(t *testing.T) {
	var out strings.Builder
	sum, err := Run(context.Background(), []string{"testdata/failing/policy_test.lua"}, Options{Out: &out, Run: "wrong_code"})
	if err != nil || sum.Tests != 1 || sum.Failed != 1 {
		t.Errorf("--run wrong_code: %+v %v\n%s", sum, err, out.String())
	}
	if _, err := Run(context.Background(), []string{"testdata/failing/policy.lua/.."}, Options{Out: &out}); err == nil {
		t.Error("a path that is not a directory: no error")
	}
	if _, err := Run(context.Background(), []string{t.TempDir()}, Options{Out: &out}); err == nil || !strings.Contains(err.Error(), "no *_test.lua") {
		t.Errorf("a directory without tests: %v", err)
	}
}

// A file that does not load is counted apart from the tests: with one
// passing test and one broken file, no test failed, one file is broken,
// and the run does not pass.
func TestBrokenFileIsNotATest(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a_test.lua"), []byte("local t = require(\"sluice.test\")\nfunction test_ok() t.eq(1, 1) end\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "b_test.lua"), []byte("function test_x(\n"), 0o644)
	var out strings.Builder
	sum, err := Run(context.Background(), []string{dir}, Options{Out: &out})
	if err != nil || sum != (Summary{Files: 2, Tests: 1, Failed: 1, Broken: 1}) {
		t.Errorf("summary %+v %v\n%s", sum, err, out.String())
	}
}
