// Package luatest runs operators' Lua rule tests: files named
// *_test.lua beside their stage scripts, whose global functions named
// test_* build messages and call the scripts' hooks through the module
// require("sluice.test"). It is `sluice test-scripts DIR` and what
// scripts/scripts_test.go runs for the shipped scripts.
//
// A script under test runs exactly as serve runs it: it is loaded by
// the Lua host (internal/luahost: the same sandbox, pool and verdict
// conversion) and called through a one-stage pipeline.Chain, so its
// edits are applied to the test's message by the same code and a hook
// it may not make is refused the same way. The test files themselves run
// in a sandboxed state of their own (internal/luahost/sandbox), with the
// `sluice` module and the test module; they cannot read files or reach
// the network either.
//
// Each test function runs in a new state (the file's top level runs
// again first), so tests do not share globals and a failed test cannot
// leave a broken state behind. A test fails when it raises an error: an
// assertion (t.eq, t.ok, ...) raises one whose message starts with the
// "file:line" of the assertion; any other Lua error carries its own
// position. The API is documented in docs/operating.md.
//
// Written here rather than taken from a library: the Lua test libraries
// (busted, luaunit) need the io/os/debug libraries the sandbox removes,
// and none can call our hooks through pipeline.Chain.
package luatest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/internal/luahost/sandbox"
)

// Options configure Run.
type Options struct {
	// Out receives the report: one line per file, and each failure
	// with its file:line. Required.
	Out io.Writer
	// Verbose also lists passing tests, and sends the scripts' logs
	// (print, sluice.log) to Out.
	Verbose bool
	// Timeout bounds one test function, the file's top level included;
	// default 10 s.
	Timeout time.Duration
	// Run, when set, runs only the tests whose name contains it.
	Run string
}

// Summary counts what Run ran.
type Summary struct {
	// Files is the number of test files found; Tests the tests run.
	Files, Tests int
	// Failed counts the tests that failed plus the files that did not
	// load (Broken), so Failed > 0 means the run did not pass.
	Failed int
	// Broken counts the files that did not load (a syntax error, an
	// error at the top level, no test_* function): no test of theirs ran.
	Broken int
}

// Run finds every *_test.lua under each path (a directory, searched
// recursively, or a file) and runs its tests. It returns an error when
// nothing could be run (no test file, a path that does not exist); test
// failures are counted in the summary and reported to o.Out.
func Run(ctx context.Context, paths []string, o Options) (Summary, error) {
	var sum Summary
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	var files []string
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return sum, err
		}
		if !fi.IsDir() {
			files = append(files, p)
			continue
		}
		err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && strings.HasSuffix(d.Name(), "_test.lua") {
				files = append(files, path)
			}
			return nil
		})
		if err != nil {
			return sum, err
		}
	}
	if len(files) == 0 {
		return sum, fmt.Errorf("no *_test.lua file under %s", strings.Join(paths, ", "))
	}
	sort.Strings(files)
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return sum, err
		}
		sum.Files++
		n, failed := runFile(ctx, f, o)
		sum.Tests += n
		sum.Failed += failed
		if n == 0 && failed > 0 {
			sum.Broken++
		}
	}
	return sum, nil
}

// runFile runs one test file and reports it; it returns the number of
// tests run and failed (a file that does not load counts as one failure).
func runFile(ctx context.Context, file string, o Options) (tests, failed int) {
	start := time.Now()
	proto, err := sandbox.CompileFile(file)
	if err != nil {
		fmt.Fprintf(o.Out, "FAIL %s\n    %v\n", file, err)
		return 0, 1
	}
	// A first run of the top level lists the tests.
	names, err := func() ([]string, error) {
		ts, err := newTestState(file, o)
		if err != nil {
			return nil, err
		}
		defer ts.close()
		if err := ts.load(ctx, proto, o.Timeout); err != nil {
			return nil, err
		}
		return ts.tests(), nil
	}()
	if err != nil {
		fmt.Fprintf(o.Out, "FAIL %s\n    %v\n", file, err)
		return 0, 1
	}
	if len(names) == 0 {
		fmt.Fprintf(o.Out, "FAIL %s\n    %s: no test_* function\n", file, file)
		return 0, 1
	}
	var report strings.Builder
	for _, name := range names {
		if o.Run != "" && !strings.Contains(name, o.Run) {
			continue
		}
		tests++
		t0 := time.Now()
		err := runTest(ctx, file, proto, name, o)
		if err != nil {
			failed++
			fmt.Fprintf(&report, "--- FAIL: %s (%s)\n    %s\n", name, since(t0), indent(err.Error()))
		} else if o.Verbose {
			fmt.Fprintf(&report, "--- ok: %s (%s)\n", name, since(t0))
		}
	}
	io.WriteString(o.Out, report.String())
	if failed > 0 {
		fmt.Fprintf(o.Out, "FAIL %s (%d of %d tests failed, %s)\n", file, failed, tests, since(start))
	} else {
		fmt.Fprintf(o.Out, "ok   %s (%d tests, %s)\n", file, tests, since(start))
	}
	return tests, failed
}

// runTest runs the file's top level in a new state, then the test.
func runTest(ctx context.Context, file string, proto *lua.FunctionProto, name string, o Options) error {
	ts, err := newTestState(file, o)
	if err != nil {
		return err
	}
	defer ts.close()
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	if err := ts.load(ctx, proto, 0); err != nil {
		return err
	}
	fn, ok := ts.sb.L.GetGlobal(name).(*lua.LFunction)
	if !ok {
		return fmt.Errorf("%s: %s is no longer a function", file, name)
	}
	_, err = ts.sb.Call(ctx, fn, 0)
	return scriptErr(err)
}

// scriptErr is a Lua error's message (file:line: text), with the
// deadline named when it stopped the test.
func scriptErr(err error) error {
	var se *sandbox.ScriptError
	if errors.As(err, &se) {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%s (the test's time limit ran out)", se.Message)
		}
		return errors.New(se.Message)
	}
	return err
}

func since(t time.Time) string { return time.Since(t).Round(time.Millisecond).String() }

func indent(s string) string { return strings.ReplaceAll(s, "\n", "\n    ") }

// logger is where the scripts' logs go.
func logger(o Options) *slog.Logger {
	if !o.Verbose {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(o.Out, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
