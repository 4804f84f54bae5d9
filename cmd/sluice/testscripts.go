package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sluice-mta/sluice/internal/luatest"
)

const testScriptsUsage = `Usage:
  sluice test-scripts [-v] [--run NAME] [--timeout 10s] DIR|FILE...
      run the Lua rule tests: every *_test.lua under DIR (recursively), each
      global function test_* in it (see docs/operating.md for the API).
      A failure names the file:line of the failed assertion.

Exit codes: 0 every test passed, 1 a test failed or a file did not load,
2 usage.
`

func runTestScripts(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("test-scripts", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, testScriptsUsage); fs.PrintDefaults() }
	verbose := fs.Bool("v", false, "list passing tests too, and show the scripts' logs")
	run := fs.String("run", "", "run only the tests whose name contains this")
	timeout := fs.Duration("timeout", 10*time.Second, "time limit of one test")
	pos, code, ok := parseInterspersed(fs, args)
	if !ok {
		return code
	}
	if len(pos) == 0 {
		fmt.Fprint(stderr, testScriptsUsage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sum, err := luatest.Run(ctx, pos, luatest.Options{Out: stdout, Verbose: *verbose, Run: *run, Timeout: *timeout})
	if err != nil {
		fmt.Fprintln(stderr, "sluice test-scripts:", err)
		return 1
	}
	if sum.Failed > 0 {
		fmt.Fprintln(stdout, failText(sum))
		return 1
	}
	fmt.Fprintf(stdout, "PASS: %d tests in %d file(s)\n", sum.Tests, sum.Files)
	return 0
}

// failText is the last line of a run that did not pass: the failed tests
// out of those run, and the files that did not load apart (none of their
// tests ran, so they are not counted as tests).
func failText(sum luatest.Summary) string {
	s := fmt.Sprintf("FAIL: %d of %d tests failed", sum.Failed-sum.Broken, sum.Tests)
	if sum.Broken > 0 {
		s += fmt.Sprintf(", %d file(s) did not load", sum.Broken)
	}
	return s + fmt.Sprintf(" in %d file(s)", sum.Files)
}
