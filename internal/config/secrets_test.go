package config

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/internal/luahost/sandbox"
	"github.com/sluice-mta/sluice/internal/testutil"
)

const secretValue = "s3cr3t-Value"

// loadedNode loads src as dir/pipeline.lua and returns the node name it
// set: the examples below pass what sluice.env / sluice.read_file return
// to sluice.node { name = ... } so the result is visible in the Config.
func loadedNode(t *testing.T, dir, src string) (string, error) {
	t.Helper()
	testutil.WriteFiles(t, dir, map[string]string{"pipeline.lua": src})
	cfg, err := Load(filepath.Join(dir, "pipeline.lua"))
	if err != nil {
		return "", err
	}
	return cfg.Node, nil
}

// checkErr checks that err is the failure wanted (nil want: no error) and
// that it never contains the secret.
func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want != "" && err == nil:
		t.Fatalf("no error, want %q", want)
	case err != nil && !strings.Contains(err.Error(), want):
		t.Fatalf("error %q\nwant it to contain %q", err, want)
	case err != nil && strings.Contains(err.Error(), secretValue):
		t.Fatalf("error %q contains the secret", err)
	}
}

func TestEnv(t *testing.T) {
	t.Setenv("SLUICE_TEST_SET", secretValue)
	t.Setenv("SLUICE_TEST_EMPTY", "")
	os.Unsetenv("SLUICE_TEST_UNSET")
	tests := []struct {
		name, expr, want, err string
	}{
		{"set", `sluice.env("SLUICE_TEST_SET")`, secretValue, ""},
		{"set, default unused", `sluice.env("SLUICE_TEST_SET", "dflt")`, secretValue, ""},
		{"unset", `sluice.env("SLUICE_TEST_UNSET")`, "", `pipeline.lua:2: sluice.env: environment variable "SLUICE_TEST_UNSET" is not set`},
		{"unset, default", `sluice.env("SLUICE_TEST_UNSET", "dflt")`, "dflt", ""},
		{"unset, empty default", `sluice.env("SLUICE_TEST_UNSET", "") .. "x"`, "x", ""},
		{"empty", `sluice.env("SLUICE_TEST_EMPTY")`, "", `pipeline.lua:2: sluice.env: environment variable "SLUICE_TEST_EMPTY" is empty`},
		{"empty, default", `sluice.env("SLUICE_TEST_EMPTY", "dflt")`, "dflt", ""},
		{"explicit nil default", `sluice.env("SLUICE_TEST_UNSET", nil)`, "", `is not set`},
		{"no name", `sluice.env()`, "", `pipeline.lua:2: sluice.env: want an environment variable name as argument 1, got nil`},
		{"empty name", `sluice.env("")`, "", `want an environment variable name as argument 1`},
		{"number name", `sluice.env(42)`, "", `want an environment variable name as argument 1, got number`},
		{"bad name", `sluice.env("A=B")`, "", `sluice.env: "A=B" is not an environment variable name`},
		{"bad default", `sluice.env("SLUICE_TEST_SET", 5)`, "", `pipeline.lua:2: sluice.env("SLUICE_TEST_SET"): want a string default as argument 2, got number`},
		// The value is never in an error, even when pcall is used.
		{"pcall still fatal", `(pcall(sluice.env, "SLUICE_TEST_UNSET") and "x" or "y")`, "", `pipeline.lua:2: sluice.env: environment variable "SLUICE_TEST_UNSET" is not set`},
		// Through a helper function called at the top level.
		{"helper", `(function(n) local v = sluice.env(n) return v end)("SLUICE_TEST_SET")`, secretValue, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := loadedNode(t, t.TempDir(), "\nsluice.node { name = "+tt.expr+" }\n")
			checkErr(t, err, tt.err)
			if err == nil && got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestReadFile(t *testing.T) {
	big := strings.Repeat("x", MaxReadFileSize)
	tests := []struct {
		name  string
		files map[string]string // under dir; the config is conf/pipeline.lua
		expr  string
		want  string
		err   string
	}{
		{"trailing newline trimmed", map[string]string{"conf/pass": secretValue + "\n"}, `sluice.read_file("pass")`, secretValue, ""},
		{"CRLF trimmed", map[string]string{"conf/pass": secretValue + "\r\n"}, `sluice.read_file("pass")`, secretValue, ""},
		{"only one newline trimmed", map[string]string{"conf/pass": "a\n\n"}, `sluice.read_file("pass") == "a\n" and "ok" or "no"`, "ok", ""},
		{"no newline", map[string]string{"conf/pass": secretValue}, `sluice.read_file("pass")`, secretValue, ""},
		{"subdirectory", map[string]string{"conf/secrets/pass": "sub"}, `sluice.read_file("secrets/pass")`, "sub", ""},
		{"parent directory", map[string]string{"pass": "up"}, `sluice.read_file("../pass")`, "up", ""},
		{"exactly the limit", map[string]string{"conf/big": big}, `#sluice.read_file("big") == 1048576 and "ok" or "no"`, "ok", ""},
		{"empty file", map[string]string{"conf/empty": ""}, `sluice.read_file("empty") .. "x"`, "x", ""},
		{"missing", nil, `sluice.read_file("secrets/nope")`, "", `pipeline.lua:2: sluice.read_file: "secrets/nope" (`},
		{"too big", map[string]string{"conf/big": secretValue + big}, `sluice.read_file("big")`, "", `pipeline.lua:2: sluice.read_file: "big" (`},
		{"directory", map[string]string{"conf/d/x": ""}, `sluice.read_file("d")`, "", `is a directory`},
		{"no path", nil, `sluice.read_file()`, "", `pipeline.lua:2: sluice.read_file: want a file path as argument 1, got nil`},
		{"empty path", nil, `sluice.read_file("")`, "", `want a file path as argument 1`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := testutil.TempFiles(t, tt.files)
			got, err := loadedNode(t, filepath.Join(dir, "conf"), "\nsluice.node { name = "+tt.expr+" }\n")
			checkErr(t, err, tt.err)
			if err == nil && got != tt.want {
				t.Fatalf("got %.40q, want %.40q", got, tt.want)
			}
		})
	}

	// The error names the resolved path and the reason.
	dir := t.TempDir()
	_, err := loadedNode(t, dir, "sluice.node { name = sluice.read_file('nope') }")
	checkErr(t, err, `sluice.read_file: "nope" (`+filepath.Join(dir, "nope")+`) does not exist`)
	_, err = loadedNode(t, dir, "sluice.node { name = sluice.read_file('"+filepath.Join(dir, "nope")+"') }")
	checkErr(t, err, `sluice.read_file: "`+filepath.Join(dir, "nope")+`" does not exist`)
	if err := os.WriteFile(filepath.Join(dir, "big"), []byte(big+"x"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = loadedNode(t, dir, "sluice.node { name = sluice.read_file('big') }")
	checkErr(t, err, `is larger than the limit of 1 MiB (1048577 bytes)`)

	// An absolute path is used as it is.
	abs := filepath.Join(t.TempDir(), "abs")
	if err := os.WriteFile(abs, []byte("absolute\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := loadedNode(t, dir, "sluice.node { name = sluice.read_file('"+abs+"') }")
	checkErr(t, err, "")
	if got != "absolute" {
		t.Fatalf("got %q", got)
	}
}

func TestReadFileUnreadable(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads files whatever their mode")
	}
	dir := testutil.TempFiles(t, map[string]string{"pass": secretValue})
	if err := os.Chmod(filepath.Join(dir, "pass"), 0); err != nil {
		t.Fatal(err)
	}
	_, err := loadedNode(t, dir, "\n\nsluice.node { name = sluice.read_file('pass') }")
	checkErr(t, err, `pipeline.lua:3: sluice.read_file: "pass" (`+filepath.Join(dir, "pass")+`) cannot be read: permission denied`)
}

// secretsConfig is a configuration whose inline stage keeps what
// sluice.env and sluice.read_file returned, as a smarthost password would
// be kept, and whose hook "late" calls sluice.env at message time.
const secretsConfig = `
local user = sluice.env("SLUICE_TEST_USER")
local pass = sluice.read_file("secrets/pass")
sluice.stage("routing", {
  on_rcpt = function() return sluice.reject(550, "5.7.1", user .. ":" .. pass) end,
})
sluice.stage("late", {
  on_rcpt = function() return sluice.reject(550, "5.7.1", sluice.env("SLUICE_TEST_USER")) end,
})
`

// replay runs cfg's program as the Lua host does and calls the on_rcpt
// hook of each inline stage, returning each reject text or error.
func replay(t *testing.T, cfg *Config, install func(*sandbox.State) *lua.LTable) (string, error, error) {
	t.Helper()
	proto, err := CompileSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := sandbox.New(nil)
	defer s.Close()
	stages := install(s)
	if _, err := s.Run(context.Background(), proto, nil); err != nil {
		return "", err, nil
	}
	call := func(name string) (string, error) {
		fn := stages.RawGetString(name).(*lua.LTable).RawGetString("on_rcpt").(*lua.LFunction)
		out, err := s.Call(context.Background(), fn, 1)
		if err != nil {
			return "", err
		}
		v, ok := sandbox.ToVerdict(out[0])
		if !ok {
			t.Fatalf("%s returned %v", name, out[0])
		}
		return v.Text, nil
	}
	text, err := call("routing")
	if err != nil {
		t.Fatalf("routing: %v", err)
	}
	_, lateErr := call("late")
	return text, nil, lateErr
}

func TestSecretsAtRuntime(t *testing.T) {
	t.Setenv("SLUICE_TEST_USER", "relayuser")
	dir := testutil.TempFiles(t, map[string]string{
		"conf/pipeline.lua": secretsConfig,
		"conf/secrets/pass": secretValue + "\n",
	})
	cfg, err := Load(filepath.Join(dir, "conf/pipeline.lua"))
	if err != nil {
		t.Fatal(err)
	}
	want := "relayuser:" + secretValue
	const hookErr = `pipeline.lua:8: sluice.env: only available while the configuration file is evaluated, not in a hook`

	// Reading again: the same values while nothing changed, the relative
	// path resolving against the configuration file's directory.
	text, err, late := replay(t, cfg, InstallRuntime)
	if err != nil || text != want {
		t.Fatalf("live replay: %q, %v", text, err)
	}
	checkErr(t, late, hookErr)

	// Config.InstallRuntime returns what Load read, even after the
	// variable and the file changed or went away.
	os.Unsetenv("SLUICE_TEST_USER")
	if err := os.Remove(filepath.Join(dir, "conf/secrets/pass")); err != nil {
		t.Fatal(err)
	}
	text, err, late = replay(t, cfg, cfg.InstallRuntime)
	if err != nil || text != want {
		t.Fatalf("snapshot replay: %q, %v", text, err)
	}
	checkErr(t, late, hookErr)

	// Reading again now fails, naming the line and not the value.
	_, err, _ = replay(t, cfg, InstallRuntime)
	checkErr(t, err, `pipeline.lua:2: sluice.env: environment variable "SLUICE_TEST_USER" is not set`)

	// A nil Config reads again, like the package function.
	_, err, _ = replay(t, cfg, (*Config)(nil).InstallRuntime)
	checkErr(t, err, `is not set`)
}

// TestSecretsNotPrinted: printing a Config shows no secret.
func TestSecretsNotPrinted(t *testing.T) {
	t.Setenv("SLUICE_TEST_USER", secretValue)
	dir := testutil.TempFiles(t, map[string]string{"pipeline.lua": `local u = sluice.env("SLUICE_TEST_USER")`})
	cfg, err := Load(filepath.Join(dir, "pipeline.lua"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Source = nil
	for _, f := range []string{"%v", "%+v", "%#v"} {
		if s := fmt.Sprintf(f, cfg); strings.Contains(s, secretValue) {
			t.Errorf("%s prints the secret: %s", f, s)
		}
	}
}

// TestReadFileErrorNamesAbsolutePath: with a relative configuration path
// the error still shows where the file was looked for.
func TestReadFileErrorNamesAbsolutePath(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	_, err := Parse("pipeline.lua", []byte("sluice.node { name = sluice.read_file('nope') }"))
	checkErr(t, err, `pipeline.lua:1: sluice.read_file: "nope" (`+filepath.Join(dir, "nope")+`) does not exist`)
}

// TestSecretRedactedFromOtherErrors: a secret passed to the wrong key is
// not printed by the error about that key.
func TestSecretRedactedFromOtherErrors(t *testing.T) {
	t.Setenv("SLUICE_TEST_ADDR", secretValue)
	for _, src := range []string{
		`sluice.listen_smtp { addr = sluice.env("SLUICE_TEST_ADDR") }`,
		`sluice.node { name = sluice.env("SLUICE_TEST_ADDR") .. " bad" }`,
		`sluice.listen_smtp { addr = sluice.read_file("secret.txt") }`,
	} {
		dir := testutil.TempFiles(t, map[string]string{"secret.txt": secretValue + "\n"})
		_, err := loadedNode(t, dir, src)
		checkErr(t, err, "pipeline.lua:1")
		if !strings.Contains(err.Error(), "<value of sluice.env(") && !strings.Contains(err.Error(), "<contents of sluice.read_file(") {
			t.Errorf("%s: the error does not say a secret was redacted: %v", src, err)
		}
	}
}
