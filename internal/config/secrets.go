package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/internal/luahost/sandbox"
)

// MaxReadFileSize bounds sluice.read_file: it is for secrets and short
// values, not data files.
const MaxReadFileSize = 1 << 20

// snapshot holds what sluice.env and sluice.read_file returned while Load
// evaluated the configuration, keyed by their argument, so that the
// run-time replay of the program (see InstallRuntime) sees the same values
// without reading the environment or files again. It holds secrets: it is
// reached through an unexported pointer so that printing a Config shows an
// address, not the values.
type snapshot struct {
	env   map[string]envValue // by variable name
	files map[string]string   // by the path argument, contents already trimmed
}

type envValue struct {
	value string
	set   bool
}

// secrets implements sluice.env and sluice.read_file for one sandbox
// state. Neither ever puts a value it read into an error message.
type secrets struct {
	s *sandbox.State
	// dir is where relative paths resolve: the configuration file's
	// directory; "" means the directory of the running chunk.
	dir string
	// record, at load time, receives the values read.
	record *Config
	// replay, at run time, holds the values Load read; nil (or a missing
	// key) reads the environment or file again.
	replay *snapshot
}

func (sc *secrets) install(m *lua.LTable) {
	m.RawSetString("env", sc.s.L.NewFunction(sc.env))
	m.RawSetString("read_file", sc.s.L.NewFunction(sc.readFile))
}

// chunk returns the name of the chunk whose top level is being evaluated,
// and raises an error when the call does not come from the top level of a
// chunk (directly or through functions it calls): these functions read
// the configuration's inputs, they are not for hooks at message time.
func (sc *secrets) chunk(L *lua.LState, fn string) string {
	var bottom *lua.Debug
	for lvl := 0; lvl < 10000; lvl++ {
		dbg, ok := L.GetStack(lvl)
		if !ok {
			break
		}
		bottom = dbg
	}
	if bottom != nil {
		if _, err := L.GetInfo("S", bottom, lua.LNil); err == nil && bottom.What != "G" && bottom.LineDefined == 0 {
			return bottom.Source
		}
	}
	sc.s.Raise("%s: only available while the configuration file is evaluated, not in a hook: "+
		"read the value into a local variable at the top level of the file", fn)
	return ""
}

// sluice.env("NAME") / sluice.env("NAME", "default")
func (sc *secrets) env(L *lua.LState) int {
	const fn = "sluice.env"
	sc.chunk(L, fn)
	nv := L.Get(1)
	ns, ok := nv.(lua.LString)
	if !ok || ns == "" {
		sc.s.Raise("%s: want an environment variable name as argument 1, got %s", fn, sandbox.Describe(nv))
	}
	name := string(ns)
	if strings.ContainsAny(name, "=\x00") {
		sc.s.Raise("%s: %q is not an environment variable name", fn, name)
	}
	var def *string
	switch d := L.Get(2).(type) {
	case *lua.LNilType:
	case lua.LString:
		s := string(d)
		def = &s
	default:
		sc.s.Raise("%s(%q): want a string default as argument 2, got %s", fn, name, sandbox.Describe(d))
	}

	v, set := sc.lookupEnv(name)
	switch {
	case v != "":
		L.Push(lua.LString(v))
	case def != nil:
		L.Push(lua.LString(*def))
	case set:
		sc.s.Raise("%s: environment variable %q is empty (give a default as argument 2 if that is fine)", fn, name)
	default:
		sc.s.Raise("%s: environment variable %q is not set", fn, name)
	}
	return 1
}

func (sc *secrets) lookupEnv(name string) (string, bool) {
	if sc.replay != nil {
		if e, ok := sc.replay.env[name]; ok {
			return e.value, e.set
		}
	}
	v, set := os.LookupEnv(name)
	if sc.record != nil {
		sc.snapshot().env[name] = envValue{value: v, set: set}
	}
	return v, set
}

// sluice.read_file("secrets/relay.pass")
func (sc *secrets) readFile(L *lua.LState) int {
	const fn = "sluice.read_file"
	chunk := sc.chunk(L, fn)
	pv := L.Get(1)
	ps, ok := pv.(lua.LString)
	if !ok || ps == "" {
		sc.s.Raise("%s: want a file path as argument 1, got %s", fn, sandbox.Describe(pv))
	}
	arg := string(ps)
	if sc.replay != nil {
		if data, ok := sc.replay.files[arg]; ok {
			L.Push(lua.LString(data))
			return 1
		}
	}
	dir := sc.dir
	if dir == "" {
		dir = filepath.Dir(chunk)
	}
	path := arg
	if !filepath.IsAbs(path) {
		path = filepath.Join(dir, path)
	}
	if abs, err := filepath.Abs(path); err == nil {
		path = abs // for the error message: the working directory may be anywhere
	}
	data, err := readSmallFile(path)
	if err != nil {
		shown := fmt.Sprintf("%q", arg)
		if path != arg {
			shown += " (" + path + ")"
		}
		sc.s.Raise("%s: %s %v", fn, shown, err)
	}
	s := string(data)
	if t := strings.TrimSuffix(s, "\n"); t != s {
		s = strings.TrimSuffix(t, "\r")
	}
	if sc.record != nil {
		sc.snapshot().files[arg] = s
	}
	L.Push(lua.LString(s))
	return 1
}

func (sc *secrets) snapshot() *snapshot {
	c := sc.record
	if c.secrets == nil {
		c.secrets = &snapshot{env: map[string]envValue{}, files: map[string]string{}}
	}
	return c.secrets
}

// readSmallFile reads a regular file of at most MaxReadFileSize bytes. Its
// errors describe the problem without the path ("does not exist").
func readSmallFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fileError(err)
	}
	switch {
	case fi.IsDir():
		return nil, errors.New("is a directory")
	case !fi.Mode().IsRegular():
		// A FIFO or device could block or never end.
		return nil, errors.New("is not a regular file")
	case fi.Size() > MaxReadFileSize:
		return nil, fmt.Errorf("is larger than the limit of 1 MiB (%d bytes)", fi.Size())
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fileError(err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxReadFileSize+1))
	if err != nil {
		return nil, fileError(err)
	}
	if len(data) > MaxReadFileSize {
		return nil, errors.New("is larger than the limit of 1 MiB")
	}
	return data, nil
}

func fileError(err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return errors.New("does not exist")
	case errors.Is(err, fs.ErrPermission):
		return errors.New("cannot be read: permission denied")
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("cannot be read: %v", pe.Err)
	}
	return fmt.Errorf("cannot be read: %v", err)
}
