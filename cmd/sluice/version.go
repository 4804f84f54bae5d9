package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
)

// version and commit are set at build time by the Makefile:
//
//	go build -ldflags "-X main.version=v1.2.0 -X main.commit=$(git rev-parse HEAD)" ./cmd/sluice
//
// Without them, versionInfo falls back to the build information the Go
// toolchain stamps into the binary (the module version for `go install
// ...@v1.2.0`, the VCS revision for a build inside a git checkout).
var (
	version = "dev"
	commit  = ""
)

// buildInfo is what `sluice version` reports.
type buildInfo struct {
	Version  string `json:"version"`
	Commit   string `json:"commit,omitempty"`
	Time     string `json:"commit_time,omitempty"` // RFC 3339, from the VCS stamp
	Modified bool   `json:"modified,omitempty"`    // built from a work tree with uncommitted changes
	Go       string `json:"go"`
	Module   string `json:"module,omitempty"`
}

// versionInfo merges the -ldflags values with runtime/debug build info;
// the -ldflags values win.
func versionInfo() buildInfo {
	b := buildInfo{Version: version, Commit: commit}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	b.Go = bi.GoVersion
	b.Module = bi.Main.Path
	if b.Version == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		b.Version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			if b.Commit == "" {
				b.Commit = s.Value
			}
		case "vcs.time":
			b.Time = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		}
	}
	return b
}

// String is the one line `sluice version` prints, e.g.
// "sluice v1.2.0 (commit 0123456789ab, 2026-11-30T09:00:00Z, go1.26.8)".
func (b buildInfo) String() string {
	var parts []string
	if b.Commit != "" {
		c := b.Commit
		if len(c) > 12 {
			c = c[:12]
		}
		if b.Modified {
			c += "+modified"
		}
		parts = append(parts, "commit "+c)
	}
	if b.Time != "" {
		parts = append(parts, b.Time)
	}
	if b.Go != "" {
		parts = append(parts, b.Go)
	}
	s := "sluice " + b.Version
	if len(parts) > 0 {
		s += " (" + strings.Join(parts, ", ") + ")"
	}
	return s
}

func runVersion(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print the build information as JSON")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	b := versionInfo()
	if *asJSON {
		out, _ := json.MarshalIndent(b, "", "  ")
		fmt.Fprintln(stdout, string(out))
		return 0
	}
	fmt.Fprintln(stdout, b.String())
	return 0
}

// parseFlags parses args with fs for a command that takes no positional
// arguments: ok false means return code (0 for -h, 2 for a usage error).
func parseFlags(fs *flag.FlagSet, args []string) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0, false
		}
		return 2, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "sluice %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2, false
	}
	return 0, true
}
